"""Face descriptors from an ONNX embedder: C++ core preprocessing + Engine execution."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maskid.errors import ModelError
from maskid.networks.contract import ModelContract
from maskid.networks.registry import (
    DEFAULT_MODEL,
    available_models,
    model_path,
    model_settings,
    sha256_file,
)
from maskid.networks.tensorrt import TENSORRT_SUFFIXES, Engine, OnnxEngine


def _resolve(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if s in available_models():
        return model_path(s)
    if s.lower().endswith((".onnx", *TENSORRT_SUFFIXES)) or Path(s).is_file():
        path = Path(s)
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        return path
    return model_path(s)  # raises ModelError listing the known names


class Embedder:
    """`Embedder("dlib-resnet-v1")`, `Embedder("path/to/model.onnx")`, or a TensorRT engine
    built from such a model by engines/build_engine.py (`Embedder("model....engine")`).

    The model takes N x 3 x S x S float32 ("input") and returns N x dim ("descriptor"). What
    it expects of its input (chip size, the template the five landmarks are warped to, colour
    order, normalisation) is its contract (`maskid.networks.contract`), read from the model's metadata:
    `chip_transform` and `prepare` follow it, so no model is fed another model's chip.
    """

    def __init__(
        self,
        name_or_path: str | Path = DEFAULT_MODEL,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ):
        path = _resolve(name_or_path)
        if path.suffix.lower() in TENSORRT_SUFFIXES:
            self._open_tensorrt(path)
            return
        # The Engine runs the batches (IO binding, CUDA provider when present); the session's
        # metadata gives the model's own settings.
        onnx_engine = OnnxEngine(path, providers, batch_max=None, threads=threads)
        self._engine: Engine = onnx_engine
        self._session = onnx_engine.session
        self.path = path
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{path.name}: expected one input and one output")
        ishape, oshape = inputs[0].shape, outputs[0].shape
        if (
            len(ishape) != 4
            or ishape[1] != 3
            or not (isinstance(ishape[2], int) and ishape[2] > 0 and ishape[2] == ishape[3])
            or len(oshape) != 2
            or not (isinstance(oshape[1], int) and oshape[1] > 0)
            or inputs[0].type != "tensor(float)"
        ):
            raise ModelError(
                f"{path.name}: expected input N x 3 x S x S float and output N x dim, "
                f"got {ishape} -> {oshape}"
            )
        self._input, self._output = inputs[0].name, outputs[0].name
        self._size = int(ishape[2])
        self._dim = int(oshape[1])
        meta = self._session.get_modelmeta().custom_metadata_map
        self._name = meta.get("model_name") or path.stem
        self._meta = meta
        self._model_id = f"{self._name}:{sha256_file(path)[:16]}"
        self._set_contract()

    def _open_tensorrt(self, path: Path) -> None:
        """An engine stands in for the ONNX model it was built from: same name, settings and
        gallery identity (its sidecar carries the model's sha256 and metadata), so a gallery
        enrolled on the CPU is searched with descriptors from the GPU."""
        sidecar = path.with_suffix(path.suffix + ".json")
        try:
            info = json.loads(sidecar.read_text())
            sha, dim = str(info["model_sha256"]), int(info["output_dim"])
            meta = {str(k): str(v) for k, v in dict(info.get("onnx_metadata", {})).items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(
                f"{path.name}: no usable sidecar {sidecar.name} ({exc}); build the engine with "
                "engines/build_engine.py"
            ) from None
        self._engine = Engine.open(path)  # ModelError where TensorRT is missing
        c, h, w = self._engine.input_shape
        if c != 3 or h != w:
            raise ModelError(f"{path.name}: expected input N x 3 x S x S, got {c} x {h} x {w}")
        self.path = path
        self._size, self._dim, self._meta = h, dim, meta
        self._name = meta.get("model_name") or Path(str(info.get("model", path.stem))).stem
        self._model_id = f"{self._name}:{sha[:16]}"
        self._set_contract()

    def _set_contract(self) -> None:
        contract = ModelContract.from_metadata(self._meta, self._name)
        if contract.input_size != self._size:
            raise ModelError(
                f"{self.path.name}: its contract says {contract.input_size} px chips but the graph "
                f"takes {self._size}"
            )
        if "descriptor_dim" in self._meta and contract.descriptor_dim != self._dim:
            raise ModelError(
                f"{self.path.name}: its contract says {contract.descriptor_dim}-d descriptors but "
                f"the graph gives {self._dim}"
            )
        self.contract = contract

    @property
    def name(self) -> str:
        return self._name

    @property
    def metadata(self) -> dict[str, str]:
        """The model file's metadata (its contract, provenance, shipped settings), read-only."""
        return dict(self._meta)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def model_id(self) -> str:
        """Name + ONNX sha256 prefix: a gallery refuses vectors made by another embedder."""
        return self._model_id

    @property
    def input_size(self) -> int:
        """Side of the square chips the model takes (150 for dlib)."""
        return self._size

    @property
    def threshold(self) -> float:
        """Default "same person" cosine threshold, chosen at FAR 1e-3 on the dev set."""
        return float(self._setting("threshold"))

    @property
    def enroll_mask_copies(self) -> int:
        """Synthetically masked copies to enroll beside each photo (measured to help)."""
        return int(self._setting("enroll_mask_copies"))

    def _setting(self, key: str) -> str:
        # Operating settings measured by benchmarks/accuracy.py live in the registry's settings
        # file; a model from elsewhere may carry its own in its metadata.
        if key in self._meta:
            return self._meta[key]
        return str(model_settings(self._name)[key])

    def chip_transform(self, landmarks5: np.ndarray) -> np.ndarray:
        """(2, 3) chip -> image transform of a face for this model (its own template and size)."""
        from maskid.alignment.similarity import model_chip_transform

        return model_chip_transform(landmarks5, self.contract)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """The model's input, float32 N x 3 x S x S as `prepare` writes it -> float32 N x dim."""
        if (
            batch.dtype != np.float32
            or batch.ndim != 4
            or batch.shape[1:] != (3, self._size, self._size)
        ):
            raise ValueError(
                f"expected float32 N x 3 x {self._size} x {self._size}, "
                f"got {batch.dtype} {batch.shape}"
            )
        if len(batch) == 0:
            return np.zeros((0, self._dim), np.float32)
        return self._engine.run(batch)

    def embed_chips(self, chips: np.ndarray) -> np.ndarray:
        """uint8 N x S x S x 3 RGB chips, aligned to this model's template -> float32 N x dim
        (colour order and normalisation from the contract are applied here)."""
        if (
            chips.dtype != np.uint8
            or chips.ndim != 4
            or chips.shape[1:] != (self._size, self._size, 3)
        ):
            raise ValueError(
                f"expected uint8 N x {self._size} x {self._size} x 3, "
                f"got {chips.dtype} {chips.shape}"
            )
        return self.embed_batch(self.contract.input_batch(chips))

    def embed_image(self, image: np.ndarray, transforms: list[np.ndarray]) -> np.ndarray:
        """uint8 H x W x 3 RGB image + one chip transform per face (`chip_transform`) -> N x dim.

        With a TensorRT engine and a CUDA device the chips are cut on the GPU straight into the
        engine's input (`uses_device_pipeline`); faces that need a pyramid level (far larger
        than the chip: dlib's anti-aliasing, done on the CPU) take the CPU path, so both paths
        give the same chips."""
        if transforms and self._device_ready(image, transforms):
            from maskid.networks.tensorrt import TrtCoreEngine

            assert isinstance(self._engine, TrtCoreEngine)
            c = self.contract
            batch = np.ascontiguousarray(np.stack(transforms), dtype=np.float64)
            return self._engine.run_image(image, batch, c.mean, c.scale, c.color_order == "BGR")
        return self.embed_batch(self.prepare(image, transforms))

    @property
    def uses_device_pipeline(self) -> bool:
        """Whether chips are warped on the GPU into the engine's device input (TensorRT + CUDA)."""
        return getattr(self._engine, "device_pipeline", None) is not None

    def _device_ready(self, image: np.ndarray, transforms: list[np.ndarray]) -> bool:
        if not self.uses_device_pipeline:
            return False
        from maskid.alignment.dlib_chip import needs_pyramid

        return not any(needs_pyramid(m, self._size) for m in transforms)

    def prepare(self, image: np.ndarray, transforms: list[np.ndarray]) -> np.ndarray:
        """The aligned input batch (N x 3 x S x S float32) for `embed_batch`: the "align" stage,
        separate so the camera loop can time it apart from the network."""
        from maskid.alignment.dlib_chip import chip_source
        from maskid.alignment.warp import warp_batch

        c = self.contract
        # A pixel outside the image is 0 before normalisation, as in the C++ core.
        batch = np.empty((len(transforms), 3, self._size, self._size), np.float32)
        batch[:] = ((0.0 - np.asarray(c.mean, np.float32)) * np.float32(c.scale))[:, None, None]
        for i, m in enumerate(transforms):
            # Large faces are sampled from a pyramid level (dlib's anti-aliasing): chip_source
            # picks the level (a view of the image otherwise); the C++ core warps, reorders the
            # colours and normalises straight into the batch.
            source, m_source = chip_source(image, m, self._size)
            if source.shape[0] >= 2 and source.shape[1] >= 2:
                warp_batch(
                    source,
                    m_source[None],
                    size=self._size,
                    mean=c.mean,
                    scale=c.scale,
                    bgr_out=c.color_order == "BGR",
                    out=batch[i : i + 1],
                )
        return batch

    def __repr__(self) -> str:
        return f"Embedder({self._model_id!r}, dim={self._dim})"
