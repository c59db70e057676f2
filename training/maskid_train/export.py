"""Export a trained student to ONNX (opset 17, dynamic batch) with maskid's metadata + sidecar.

    PYTHONPATH=training python -m maskid_train.export runs/eyes/best.pt \
        --name maskid-eyegate-v1 --out python/maskid/data/models

Graph: input "input" N x 3 x 150 x 150 float32 RGB 0..255 -> output "descriptor" N x 128
(raw, not L2-normalised; the normalisation (x - mean) / 256 is inside the graph). Weights stay
fp32 (22.5 MB, under the 25 MB budget), so ONNX Runtime matches PyTorch to ~1e-6.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from .net import Student, build_student

OPSET = 17
CHIP_PADDING = 0.25
INPUT_SCALE = 1.0 / 256.0


def load_student(ckpt: Path) -> tuple[Student, dict[str, Any]]:
    state = torch.load(ckpt, weights_only=False, map_location="cpu")
    model = build_student(state["variant"])
    model.load_state_dict(state["model"])
    return model.eval(), state


def to_onnx(model: Student, path: Path, metadata: dict[str, str]) -> None:
    """Write `model` as ONNX with `metadata` in metadata_props (atomic rename)."""
    model = model.eval()
    x = torch.zeros(2, 3, 150, 150)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about shape-derived Python ints
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            dynamo=False,
            input_names=["input"],
            output_names=["descriptor"],
            dynamic_axes={"input": {0: "N"}, "descriptor": {0: "N"}},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    m = onnx.load(str(tmp))
    m.graph.name = metadata.get("model_name", m.graph.name)
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, metadata)
    onnx.checker.check_model(m)
    onnx.save(m, str(tmp))
    os.replace(tmp, path)


def parity(model: Student, onnx_path: Path, chips: np.ndarray) -> float:
    """Max abs difference PyTorch vs ONNX Runtime on uint8 chips (N,150,150,3)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = chips.transpose(0, 3, 1, 2).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    got = sess.run(["descriptor"], {"input": x})[0]
    return float(np.abs(got - ref).max())


def metadata(name: str, version: str, trained_from: str, threshold: float | None) -> dict[str, str]:
    return {
        "model_name": name,
        "version": version,
        "input_size": json.dumps([150, 150]),
        "color_order": "RGB",
        "mean": json.dumps([122.782, 117.001, 104.298]),
        "scale": json.dumps(INPUT_SCALE),
        "chip_padding": json.dumps(CHIP_PADDING),
        "descriptor_dim": "128",
        "normalized": "false",
        "metric": "cosine",
        "enroll_mask_copies": "3",
        "threshold": json.dumps(threshold) if threshold is not None else "null",
        "trained_from": trained_from,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("ckpt", type=Path, help="best.pt / last.pt from maskid_train.train")
    p.add_argument("--name", default="maskid-eyegate-v1")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--out", type=Path, default=Path("python/maskid/data/models"))
    p.add_argument(
        "--dev-cache",
        type=Path,
        default=Path("/work/cache/chips/dev_m2fred.npz"),
        help="real chips for the parity check (made by training)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="cosine threshold to ship (default: dev masked FAR=1e-3 threshold)",
    )
    args = p.parse_args(argv)

    model, state = load_student(args.ckpt)
    dev = state.get("dev", {})
    thr = args.threshold
    if thr is None and "m2fred_masked_enroll+masks" in dev:
        thr = round(float(dev["m2fred_masked_enroll+masks"]["threshold"]), 4)
    trained_from = (
        "dlib_face_recognition_resnet_model_v1.dat fine-tuned (distillation + CosFace) on "
        "glint23 + celeba (shared/data/train) with synthetic masks"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / f"{args.name}.onnx"
    meta = metadata(args.name, args.version, trained_from, thr)
    meta["variant"] = str(state["variant"])
    to_onnx(model, onnx_path, meta)

    chips = np.load(args.dev_cache)["chips"][:3] if args.dev_cache.exists() else None
    diffs = {}
    if chips is not None:
        diffs = {f"batch{b}": parity(model, onnx_path, chips[:b]) for b in (1, 3)}
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    sidecar = {
        **{
            k: (
                json.loads(v)
                if k in {"input_size", "mean", "scale", "chip_padding", "threshold"}
                else v
            )
            for k, v in meta.items()
        },
        "file": onnx_path.name,
        "sha256": sha,
        "bytes": onnx_path.stat().st_size,
        "opset": OPSET,
        "input": {"name": "input", "shape": ["N", 3, 150, 150], "dtype": "float32"},
        "output": {"name": "descriptor", "shape": ["N", 128], "dtype": "float32"},
        "checkpoint_epoch": state.get("epoch"),
        "onnx_vs_pytorch_max_abs": diffs,
        "dev": dev,
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    print(f"{onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB) sha256 {sha[:16]} parity {diffs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
