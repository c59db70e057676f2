"""The model contract: what an embedder expects of its input, as data the pipeline reads.

Each ONNX embedder carries its contract in `metadata_props` (a TensorRT engine carries the same
map in its sidecar), so the pipeline never assumes one model's geometry: the chip size, where
the five landmarks must land, the colour order and the normalisation all come from here
(OMZ's model.yml / spec pages, insightface's per-model input_mean/std, as data).

Keys (all strings; JSON where structured):
  model_name        registry name
  input_size        chip side S (JSON int, or [S, S] as the dlib port writes it)
  chip_geometry     "similarity": least-squares similarity of `chip_template` onto the landmarks,
                    sampled bilinearly (insightface's norm_crop, OMZ's alignment);
                    "dlib": dlib's get_face_chip geometry (maskid.alignment.similarity.chip_transform), with
                    `chip_padding` (0.25)
  chip_template     JSON 5 x [x, y], fractions of S, in maskid's landmark order (left_eye,
                    right_eye, nose, mouth_left, mouth_right; "left" = smaller x in the image)
  landmark_weights  JSON 5 floats: weights of the points in the fit (masks hide the mouth)
  color_order       "RGB" or "BGR": the channel order of the model's input planes
  mean, scale       input = (pixel - mean[c]) * scale, mean per input channel (JSON)
  descriptor_dim    output size
  metric            "cosine"
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from maskid.errors import ModelError

GEOMETRIES = ("similarity", "dlib")
COLOR_ORDERS = ("RGB", "BGR")
# Points under a mask are guesses: the eyes lead, the nose steadies the scale.
EYE_WEIGHTED = (1.0, 1.0, 0.1, 0.0, 0.0)
ALL_POINTS = (1.0, 1.0, 1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelContract:
    name: str
    input_size: int
    chip_geometry: str
    chip_template: tuple[tuple[float, float], ...]
    landmark_weights: tuple[float, ...]
    color_order: str
    mean: tuple[float, ...]
    scale: float
    descriptor_dim: int
    metric: str = "cosine"
    chip_padding: float = 0.25  # "dlib" geometry only: dlib's get_face_chip padding

    def __post_init__(self) -> None:
        if self.chip_geometry not in GEOMETRIES:
            raise ModelError(f"{self.name}: unknown chip_geometry {self.chip_geometry!r}")
        if self.color_order not in COLOR_ORDERS:
            raise ModelError(f"{self.name}: unknown color_order {self.color_order!r}")
        t = np.asarray(self.chip_template, dtype=np.float64)
        if t.shape != (5, 2) or not np.all(np.isfinite(t)):
            raise ModelError(f"{self.name}: chip_template must be 5 x [x, y]")
        w = np.asarray(self.landmark_weights, dtype=np.float64)
        if w.shape != (5,) or np.any(w < 0) or w[:2].sum() <= 0:
            raise ModelError(f"{self.name}: landmark_weights must be 5 non-negative numbers")
        if self.input_size < 2 or self.descriptor_dim < 1 or self.scale <= 0:
            raise ModelError(f"{self.name}: bad input_size/descriptor_dim/scale")
        if len(self.mean) != 3:
            raise ModelError(f"{self.name}: mean must have 3 values")
        if self.metric != "cosine":
            raise ModelError(f"{self.name}: unsupported metric {self.metric!r}")

    @property
    def template_px(self) -> np.ndarray:
        """(5, 2) template in chip pixels (fractions x S)."""
        return np.asarray(self.chip_template, dtype=np.float64) * self.input_size

    def input_batch(self, chips: np.ndarray) -> np.ndarray:
        """uint8 N x S x S x 3 RGB chips -> the model's float32 N x 3 x S x S input: its colour
        order, then (v - mean) * scale (what the C++ core writes in one pass for `prepare`)."""
        planes = chips[..., ::-1] if self.color_order == "BGR" else chips
        batch = np.ascontiguousarray(planes.transpose(0, 3, 1, 2), dtype=np.float32)
        batch -= np.asarray(self.mean, np.float32)[None, :, None, None]
        batch *= np.float32(self.scale)
        return batch

    def to_metadata(self) -> dict[str, str]:
        return {
            "model_name": self.name,
            "input_size": json.dumps(self.input_size),
            "chip_geometry": self.chip_geometry,
            "chip_template": json.dumps(
                [[round(x, 8), round(y, 8)] for x, y in self.chip_template]
            ),
            "landmark_weights": json.dumps(list(self.landmark_weights)),
            "color_order": self.color_order,
            "mean": json.dumps(list(self.mean)),
            "scale": json.dumps(self.scale),
            "descriptor_dim": str(self.descriptor_dim),
            "metric": self.metric,
        }

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], fallback_name: str = "") -> ModelContract:
        """Read a contract from ONNX metadata_props. Models written before the contract existed
        (the dlib port, maskid-eyes-v1, trained exports) have no `chip_geometry`: they are dlib
        geometry, RGB, normalised inside the graph."""
        from maskid.alignment.similarity import TEMPLATE

        name = meta.get("model_name") or fallback_name
        try:
            size_raw = json.loads(meta["input_size"]) if "input_size" in meta else 150
            size = int(size_raw[0] if isinstance(size_raw, list) else size_raw)
            dim = int(meta.get("descriptor_dim", "0"))
            geometry = meta.get("chip_geometry", "dlib")
            if geometry == "dlib":
                pad = float(json.loads(meta.get("chip_padding", "0.25")))
                extra = {"chip_padding": pad}
                template = (pad + TEMPLATE) / (2 * pad + 1)
                weights = json.loads(meta.get("landmark_weights", json.dumps(EYE_WEIGHTED)))
                # The dlib graphs normalise inside; their "mean"/"scale" keys describe that.
                mean: tuple[float, ...] = (0.0, 0.0, 0.0)
                scale = 1.0
            else:
                extra = {}
                template = np.asarray(json.loads(meta["chip_template"]), dtype=np.float64)
                weights = json.loads(meta["landmark_weights"])
                mean_raw = json.loads(meta["mean"])
                mean = tuple(float(v) for v in (mean_raw * 3 if len(mean_raw) == 1 else mean_raw))
                scale = float(json.loads(meta["scale"]))
            return cls(
                name=name,
                input_size=size,
                chip_geometry=geometry,
                chip_template=tuple((float(x), float(y)) for x, y in template),
                landmark_weights=tuple(float(v) for v in weights),
                color_order=meta.get("color_order", "RGB"),
                mean=tuple(mean),
                scale=scale,
                descriptor_dim=dim if dim > 0 else 1,
                metric=meta.get("metric", "cosine"),
                **extra,
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ModelError(
                f"{name or 'model'}: malformed contract in its metadata ({e})"
            ) from None
