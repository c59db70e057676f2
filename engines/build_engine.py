"""Build a TensorRT engine from an ONNX model, cached by everything that makes it valid.

    python engines/build_engine.py MODEL.onnx --precision fp16 --max-batch 32
    python engines/build_engine.py MODEL.onnx --precision int8 --calib chips/   # or chips.npy

The engine lands in ``maskid.paths.cache_dir()/engines`` as
``<stem>.<sha256[:16]>.trt<version>.<gpu>.<precision>.b<max_batch>.engine`` with a JSON sidecar.
An existing engine is reused only when its sidecar matches the model's full sha256, this
TensorRT version, this GPU, the precision and the batch; otherwise it is refused (rebuild with
``--force``). INT8 needs real face chips aligned for the model (S x S images, S the model's input
size, or an .npy of ``(N, S, S, 3)`` uint8 RGB chips, or ``(N, 3, S, S)`` float32 already in the
model's input form, e.g. from ``Embedder.prepare``); image and uint8 chips are put into the
model's input form by its contract (colour order, mean, scale); there is no random-data
fallback.
Prints the engine path on stdout; errors are one line on stderr with exit code 6.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from maskid.errors import ModelError
from maskid.networks.contract import ModelContract
from maskid.networks.registry import sha256_file
from maskid.paths import cache_dir

PRECISIONS = ("fp32", "fp16", "int8")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def gpu_name() -> str:
    """The first GPU's name, without a shell (nvidia-smi), else via pycuda."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda

        return str(cuda.Device(0).name())
    except Exception as exc:  # no driver, no device, no pycuda (Jetson has no nvidia-smi)
        raise ModelError(f"cannot determine the GPU (nvidia-smi and pycuda failed: {exc})") from exc


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()


def engine_key(model: Path, precision: str, max_batch: int, trt_version: str, gpu: str) -> dict:
    return {
        "model": model.name,
        "model_sha256": sha256_file(model),
        "tensorrt": trt_version,
        "gpu": gpu,
        "precision": precision,
        "max_batch": max_batch,
    }


def engine_path(key: dict) -> Path:
    name = (
        f"{Path(key['model']).stem}.{key['model_sha256'][:16]}.trt{key['tensorrt']}."
        f"{slug(key['gpu'])}.{key['precision']}.b{key['max_batch']}.engine"
    )
    return cache_dir() / "engines" / name


def check_fresh(path: Path, key: dict) -> None:
    """Raise ModelError unless `path` has a sidecar describing exactly `key`."""
    sidecar = path.with_suffix(path.suffix + ".json")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"stale engine {path.name}: no readable sidecar ({exc})") from exc
    diff = [k for k, v in key.items() if meta.get(k) != v]
    if diff:
        raise ModelError(f"stale engine {path.name}: {', '.join(diff)} changed; use --force")


def onnx_contract(model: Path) -> dict[str, Any]:
    """What an `Embedder` needs to use the engine in place of the ONNX model, read from the
    model: its output width and its metadata (name, threshold, enrollment settings)."""
    import onnx

    try:
        graph = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # onnx raises several types for a corrupt file
        raise ModelError(f"cannot read {model.name} as ONNX: {exc}") from exc
    outputs = graph.graph.output
    dims = outputs[0].type.tensor_type.shape.dim if len(outputs) == 1 else []
    if len(dims) != 2 or not dims[1].dim_value:
        raise ModelError(f"{model.name}: expected one output of shape N x dim")
    return {
        "output_dim": int(dims[1].dim_value),
        "onnx_metadata": {p.key: p.value for p in graph.metadata_props},
    }


def sidecar(key: dict, input_name: str, chw: tuple[int, ...], contract: dict) -> dict[str, Any]:
    """The engine's JSON sidecar: its cache key (`engine_key`), its input, and the ONNX model's
    output width and metadata (`onnx_contract`), from which `maskid.networks.embedder.Embedder` reads the
    model's name, settings and input contract when it opens the engine."""
    return {**key, "input": input_name, "input_shape": list(chw), **contract}


def _to_model_input(rgb: np.ndarray, metadata: Mapping[str, str]) -> np.ndarray:
    """uint8/float N x 3 x S x S RGB 0..255 -> the model's input: its colour order, (x - mean)
    * scale, as `maskid.networks.embedder.Embedder.prepare` feeds it (identity for the dlib graphs, which
    normalise inside)."""
    c = ModelContract.from_metadata(metadata)
    planes = rgb[:, ::-1] if c.color_order == "BGR" else rgb
    data = planes.astype(np.float32)
    data -= np.asarray(c.mean, np.float32)[None, :, None, None]
    data *= np.float32(c.scale)
    return np.ascontiguousarray(data)


def load_calibration(
    source: Path, shape: tuple[int, int, int], metadata: Mapping[str, str] | None = None
) -> np.ndarray:
    """Real aligned chips in the model's input form (float32 NCHW). Image files and uint8 .npy
    chips (N x S x S x 3 RGB) are converted by the model's contract (`metadata`, the ONNX
    metadata_props; none: RGB 0..255 as the dlib graphs take it); a float32 .npy is taken as
    the model's input already (e.g. from `Embedder.prepare`)."""
    c, h, w = shape
    metadata = metadata or {}
    if source.suffix == ".npy":
        data = np.load(source)
        if data.dtype == np.uint8 and data.ndim == 4 and data.shape[-1] == 3:
            data = _to_model_input(data.transpose(0, 3, 1, 2), metadata)
        data = np.ascontiguousarray(data, dtype=np.float32)
    elif source.is_dir():
        import cv2

        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        chips = []
        for p in files:
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                raise ModelError(f"unreadable calibration image {p}")
            if img.shape[:2] != (h, w):
                raise ModelError(f"calibration chip {p.name} is {img.shape[:2]}, need {(h, w)}")
            chips.append(img[..., ::-1].transpose(2, 0, 1))
        data = _to_model_input(np.asarray(chips, dtype=np.uint8).reshape(-1, c, h, w), metadata)
    else:
        raise ModelError(f"calibration data must be a folder of chips or an .npy: {source}")
    if data.ndim != 4 or data.shape[1:] != (c, h, w):
        raise ModelError(f"calibration data has shape {data.shape}, need (N, {c}, {h}, {w})")
    if len(data) < 32:
        raise ModelError(f"only {len(data)} calibration chips; use at least 32 real faces")
    return data


def build(args: argparse.Namespace) -> Path:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ModelError(
            "TensorRT is not installed (pip install maskid[gpu] on a GPU machine)"
        ) from exc

    model = Path(args.model)
    if not model.is_file():
        raise ModelError(f"model not found: {model}")
    key = engine_key(model, args.precision, args.max_batch, trt.__version__, gpu_name())
    out = engine_path(key)
    if out.exists() and not args.force:
        check_fresh(out, key)
        return out

    contract = onnx_contract(model)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch (flag 0); 8.x must ask for it, or the ONNX
    # parser refuses the implicit-batch network that 0 means there.
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    major = int(trt.__version__.split(".")[0])
    network = builder.create_network(0 if major >= 10 or explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {model.name}: {errors}")
    if network.num_inputs != 1:
        raise ModelError(f"{model.name}: expected one input, got {network.num_inputs}")
    inp = network.get_input(0)
    chw = tuple(int(d) for d in inp.shape[1:])
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    opt = max(1, min(args.max_batch, 16))
    profile.set_shape(inp.name, (1, *chw), (opt, *chw), (args.max_batch, *chw))
    config.add_optimization_profile(profile)

    if args.precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            print("warning: this GPU has no fast FP16", file=sys.stderr)
        config.set_flag(trt.BuilderFlag.FP16)
    if args.precision == "int8":
        if args.calib is None:
            raise ModelError("--precision int8 needs --calib with real aligned face chips")
        if not builder.platform_has_fast_int8:
            raise ModelError("this GPU has no fast INT8; use --precision fp16")
        data = load_calibration(Path(args.calib), chw, contract["onnx_metadata"])  # type: ignore[arg-type]
        cache = out.with_suffix(".calib")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, data, cache)
        config.set_calibration_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build {model.name} (see the log above)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)
    meta = sidecar(key, inp.name, chw, contract)
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(meta, indent=2))
    return out


def _calibrator(trt: Any, data: np.ndarray, cache: Path) -> Any:
    import pycuda.autoinit  # noqa: F401
    import pycuda.driver as cuda

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.batch = 16
            self.pos = 0
            self.device = cuda.mem_alloc(data[: self.batch].nbytes)

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.pos + self.batch > len(data):
                return None
            cuda.memcpy_htod(
                self.device, np.ascontiguousarray(data[self.pos : self.pos + self.batch])
            )
            self.pos += self.batch
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.exists() else None

        def write_calibration_cache(self, blob: bytes) -> None:
            cache.write_bytes(bytes(blob))

    return Calibrator()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "model", help="the .onnx model (e.g. from maskid.networks.registry.model_path())"
    )
    ap.add_argument("--precision", choices=PRECISIONS, default="fp16")
    ap.add_argument("--max-batch", type=int, default=32, help="largest batch the engine accepts")
    ap.add_argument(
        "--calib", help="INT8 only: folder of chips aligned for the model (S x S), or an .npy"
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if a fresh engine exists")
    args = ap.parse_args(argv)
    if args.max_batch < 1:
        ap.error("--max-batch must be >= 1")
    try:
        print(build(args))
    except ModelError as exc:
        print(f"build_engine: {exc}", file=sys.stderr)
        return ModelError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
