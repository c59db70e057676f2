"""Face detection with five landmarks (MTCNN on ONNX Runtime; no torch or TensorFlow at run time).

MTCNN (Zhang et al. 2016) with facenet-pytorch's MIT weights, exported by
`training/maskid_train/export_mtcnn.py` to `maskid/data/detector/{pnet,rnet,onet}.onnx`. It finds masked
faces (about 96% of the real masked photos in M2FRED) where dlib's HOG finds almost none, and its
five points (eye centres, nose tip, mouth corners) stay plausible under a mask.

Pipeline: image pyramid -> PNet (fully convolutional, one run per level) -> NMS -> RNet on all
candidates in one batch -> NMS -> ONet in one batch (landmarks) -> NMS. Large photos are
downscaled to `max_side` for the PNet/RNet stages; ONet reads its crops from the full-resolution
image, so boxes and landmarks come back in original-image pixels at full precision.

TensorRT note: pnet needs an optimisation profile over H and W (e.g. min 12x12, opt 360x480,
max 640x640 at N=1); rnet/onet need one over N (1..256 / 1..64). The graphs use only Conv, PRelu,
MaxPool (ceil_mode), Gemm, Softmax, Transpose, Reshape, Gather, Sub, Mul: all TensorRT-native.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskid.errors import ImageError, ModelError
from maskid.face import Face
from maskid.paths import PACKAGE_DATA

DETECTOR_DIR = PACKAGE_DATA / "detector"

_PNET_STRIDE = 2
_PNET_CELL = 12


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression. Returns kept indices, best score first.

    `mode` "union" is IoU; "min" divides the intersection by the smaller box (MTCNN's last stage).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        overlap = inter / np.maximum(denom, 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Make boxes square around their centres (side = longer side)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    out = boxes.copy()
    out[:, 0:4] = boxes[:, 0:4] + reg * np.hstack([w, h, w, h])
    return out


class _Pyramid:
    """An image at several scales, built by cheap anti-aliased steps (pyrDown, then linear).

    Each level is (sx, sy, image) with sx = level width / base width.
    """

    def __init__(self, base: np.ndarray, base_w: int | None = None, base_h: int | None = None):
        h, w = base.shape[:2]
        self.w = base_w or w
        self.h = base_h or h
        self.levels: list[tuple[float, float, np.ndarray]] = [(w / self.w, h / self.h, base)]

    def add_halvings(self, min_scale: float) -> None:
        """Add pyrDown levels (1/2, 1/4, ...) of the largest level down to about `min_scale`."""
        sx, sy, img = self.levels[0]
        while min(img.shape[:2]) >= 2 * _PNET_CELL and sx * 0.5 >= min_scale:
            img = cv2.pyrDown(img)
            sx, sy = img.shape[1] / self.w, img.shape[0] / self.h
            self.levels.append((sx, sy, img))

    def resized(self, scale: float) -> tuple[float, float, np.ndarray]:
        """The image at `scale` (ceil sizes), resized linearly from the nearest larger level."""
        ws, hs = max(1, math.ceil(self.w * scale)), max(1, math.ceil(self.h * scale))
        src = min((lv for lv in self.levels if lv[0] >= scale), key=lambda lv: lv[0])
        img = src[2]
        if img.shape[1] != ws or img.shape[0] != hs:
            img = cv2.resize(img, (ws, hs), interpolation=cv2.INTER_LINEAR)
        return ws / self.w, hs / self.h, img

    def add(self, level: tuple[float, float, np.ndarray]) -> None:
        self.levels.append(level)

    def crops(self, boxes: np.ndarray, size: int) -> np.ndarray:
        """Crop `boxes` (base pixels) to size x size each, N x 3 x size x size float32 (0..255).

        Each crop is read from the smallest level where it is still at least `size` pixels, so
        a linear resize needs no anti-aliasing. Outside the image is black, as in MTCNN.
        """
        out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
        by_scale = sorted(self.levels, key=lambda lv: lv[0])
        for k, box in enumerate(boxes[:, :4]):
            side = max(box[2] - box[0], box[3] - box[1], 1e-6)
            sx, sy, img = by_scale[-1]
            for lv in by_scale:
                if side * lv[0] >= size:
                    sx, sy, img = lv
                    break
            h, w = img.shape[:2]
            x1, x2 = round(box[0] * sx), round(box[2] * sx)
            y1, y2 = round(box[1] * sy), round(box[3] * sy)
            if x2 <= x1 or y2 <= y1:
                continue
            cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            if cx2 <= cx1 or cy2 <= cy1:
                continue
            patch = img[cy1:cy2, cx1:cx2]
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                patch = cv2.copyMakeBorder(
                    patch, cy1 - y1, y2 - cy2, cx1 - x1, x2 - cx2, cv2.BORDER_CONSTANT, value=0
                )
            out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
        return out.transpose(0, 3, 1, 2).astype(np.float32)


class MtcnnDetector:
    """MTCNN face detector returning `Face`s (box, score, 5 landmarks), largest face first.

    Args:
        min_face_size: smallest face side to look for, in pixels of the image as analysed, i.e.
            after downscaling to `max_side`. The defaults (20, 320) find faces of >= 20 px in
            images up to 320 px (tight crops, padded or not), >= 40 px in a 640 x 480 frame and
            >= 120 px in 1920 x 1080, at a bounded cost (~10 ms). For small faces in big frames
            raise `max_side` (or set None); cost grows with (max_side / min_face_size)^2.
        thresholds: PNet/RNet/ONet score thresholds (MTCNN's defaults 0.6, 0.7, 0.7).
        score_threshold: faces scoring below this after ONet are dropped (>= thresholds[2]).
        max_side: images whose longer side exceeds this are searched as if downscaled to it
            (this bounds the cost); crops for RNet/ONet come from an anti-aliased pyramid of the
            full-resolution image, and results are in original-image pixels. None: never.
        scale_factor: pyramid step (0.709 in MTCNN; larger is slower and slightly more sensitive).
        threads: ONNX Runtime intra-op threads (0 = ORT's default).
        providers: ONNX Runtime execution providers (default CPU).
        model_dir: folder with pnet/rnet/onet.onnx (default: the bundled models).
    """

    # PNet and RNet need context around a face: tight crops are searched with a border
    # (maskid.detection.tight_crops).
    needs_border = True

    def __init__(
        self,
        min_face_size: float = 20.0,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        score_threshold: float = 0.7,
        max_side: int | None = 320,
        scale_factor: float = 0.709,
        threads: int = 2,
        providers: Sequence[str] | None = None,
        model_dir: str | Path | None = None,
    ) -> None:
        if min_face_size < _PNET_CELL:
            raise ValueError(f"min_face_size must be >= {_PNET_CELL} pixels, got {min_face_size}")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be three numbers in [0, 1], got {thresholds!r}")
        if not 0.1 < scale_factor < 0.95:
            raise ValueError(f"scale_factor must be in (0.1, 0.95), got {scale_factor}")
        if max_side is not None and max_side < 48:
            raise ValueError(f"max_side must be >= 48 or None, got {max_side}")
        self.min_face_size = float(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.score_threshold = float(score_threshold)
        self.max_side = max_side
        self.scale_factor = float(scale_factor)
        folder = Path(model_dir) if model_dir is not None else DETECTOR_DIR
        self._pnet = detector_session(folder / "pnet.onnx", threads, providers)
        self._rnet = detector_session(folder / "rnet.onnx", threads, providers)
        self._onet = detector_session(folder / "onet.onnx", threads, providers)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"MtcnnDetector(min_face_size={self.min_face_size:g}, thresholds={self.thresholds}, "
            f"score_threshold={self.score_threshold:g}, max_side={self.max_side})"
        )

    # -- public ------------------------------------------------------------------------------
    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Find faces in an RGB uint8 H x W x 3 image.

        Returns every face scoring at least `score_threshold`, largest box first. Boxes are
        x1, y1, x2, y2 and landmarks (5, 2) x, y in input-image pixels, in the order
        left_eye, right_eye, nose, mouth_left, mouth_right ("left" = smaller x when upright).
        """
        image = _check_image(image_rgb)
        h, w = image.shape[:2]
        scale = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
        min_face = self.min_face_size / scale
        scales = self._scales(h, w, min_face)
        full = _Pyramid(image)
        full.add_halvings(min(scales) if scales else 1.0)
        with self._lock:  # ORT sessions are thread-safe, but keep one detection at a time
            boxes = self._stage1(full, scales)
            if len(boxes):
                boxes = self._stage2(full, boxes, scale)
            if len(boxes):
                boxes, points = self._stage3(full, boxes)
            else:
                points = np.zeros((0, 5, 2))
        faces = [
            Face(box=b[:4].astype(np.float64), score=float(b[4]), landmarks=p.astype(np.float64))
            for b, p in zip(boxes, points, strict=True)
        ]
        faces.sort(key=lambda f: f.size, reverse=True)
        return faces

    def score_boxes(self, image_rgb: np.ndarray, boxes: np.ndarray) -> list[Face]:
        """Run only ONet on given candidate boxes (N, 4): for tight face crops, where the whole
        image is the face and PNet/RNet, which need context, tend to reject masked faces.

        Returns the candidates ONet scores at least `score_threshold`, largest first.
        """
        faces = [
            Face(box=b, score=float(s), landmarks=p)
            for b, s, p in zip(*self.onet(image_rgb, boxes), strict=True)
            if s >= self.score_threshold
        ]
        faces.sort(key=lambda f: f.size, reverse=True)
        return faces

    def onet(
        self, image_rgb: np.ndarray, boxes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ONet alone on given boxes (N, 4), each squared about its centre: per box its regressed
        box (N, 4), face score (N,) and 5 points (N, 5, 2), in image pixels, in input order (the
        cascade puts these points on another detector's boxes). Outside the image is black."""
        image = _check_image(image_rgb)
        cand = np.hstack([np.asarray(boxes, np.float64).reshape(-1, 4), np.ones((len(boxes), 1))])
        if len(cand) == 0:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        squared = _square(cand)
        pyr = _Pyramid(image)
        pyr.add_halvings(1.0)
        with self._lock:
            x = pyr.crops(squared, 48)
            reg, lm, prob = self._onet.run(None, {"image": x})
        side = (squared[:, 2:3] - squared[:, 0:1], squared[:, 3:4] - squared[:, 1:2])
        points = np.stack(
            [squared[:, 0:1] + lm[:, 0:5] * side[0], squared[:, 1:2] + lm[:, 5:10] * side[1]],
            axis=2,
        )
        return _regress(squared[:, :4], reg), np.asarray(prob, np.float64).reshape(-1), points

    # -- stages ------------------------------------------------------------------------------
    def _scales(self, h: int, w: int, min_face: float) -> list[float]:
        """PNet pyramid scales (relative to the input image): the first maps min_face to 12 px."""
        m = _PNET_CELL / max(min_face, _PNET_CELL)
        scales = []
        side = min(h, w) * m
        s = m
        while side >= _PNET_CELL:
            scales.append(s)
            s *= self.scale_factor
            side *= self.scale_factor
        return scales

    def _stage1(self, pyr: _Pyramid, scales: list[float]) -> np.ndarray:
        out = []
        levels = []
        for s in scales:
            sx, sy, level = pyr.resized(s)
            levels.append((sx, sy, level))
            x = level.transpose(2, 0, 1)[None].astype(np.float32)
            reg, prob = self._pnet.run(None, {"image": x})
            prob = prob[0]
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if ys.size == 0:
                continue
            score = prob[ys, xs]
            r = reg[0][:, ys, xs].T
            bx = np.stack(
                [
                    xs * _PNET_STRIDE / sx,
                    ys * _PNET_STRIDE / sy,
                    (xs * _PNET_STRIDE + _PNET_CELL) / sx,
                    (ys * _PNET_STRIDE + _PNET_CELL) / sy,
                    score,
                ],
                axis=1,
            )
            boxes = np.hstack([bx, r]).astype(np.float64)
            keep = nms(boxes[:, :4], boxes[:, 4], 0.5)
            out.append(boxes[keep])
        for lv in levels:  # later stages crop from these too
            pyr.add(lv)
        if not out:
            return np.zeros((0, 5))
        boxes = np.vstack(out)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = boxes[keep]
        boxes = np.hstack([_regress(boxes[:, :4], boxes[:, 5:9]), boxes[:, 4:5]])
        return _square(boxes)

    def _stage2(self, pyr: _Pyramid, boxes: np.ndarray, max_scale: float) -> np.ndarray:
        x = pyr.crops(boxes, 24)
        reg, prob = self._rnet.run(None, {"image": x})
        ok = prob > self.thresholds[1]
        boxes, reg = boxes[ok].copy(), reg[ok]
        boxes[:, 4] = prob[ok]
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes, reg = boxes[keep], reg[keep]
        boxes = np.hstack([_regress(boxes[:, :4], reg), boxes[:, 4:5]])
        return _square(boxes)

    def _stage3(self, pyr: _Pyramid, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = pyr.crops(boxes, 48)
        reg, lm, prob = self._onet.run(None, {"image": x})
        thr = max(self.thresholds[2], self.score_threshold)
        ok = prob > thr
        boxes, reg, lm = boxes[ok].copy(), reg[ok], lm[ok]
        boxes[:, 4] = prob[ok]
        bw = (boxes[:, 2] - boxes[:, 0])[:, None]
        bh = (boxes[:, 3] - boxes[:, 1])[:, None]
        px = boxes[:, 0:1] + lm[:, 0:5] * bw
        py = boxes[:, 1:2] + lm[:, 5:10] * bh
        points = np.stack([px, py], axis=2)
        boxes = np.hstack([_regress(boxes[:, :4], reg), boxes[:, 4:5]])
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
        return boxes[keep], points[keep]


def check_rgb(image: np.ndarray) -> np.ndarray:
    """`image` if it is what every detector takes (uint8 H x W x 3 RGB), else ImageError."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError("detect() needs a uint8 numpy array (H x W x 3, RGB)")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"detect() needs an H x W x 3 RGB image, got shape {image.shape}")
    return image


def _check_image(image: np.ndarray) -> np.ndarray:
    check_rgb(image)
    if min(image.shape[:2]) < _PNET_CELL:
        return np.zeros((_PNET_CELL, _PNET_CELL, 3), np.uint8)  # too small: finds nothing
    return np.ascontiguousarray(image)


def detector_session(path: Path, threads: int, providers: Sequence[str] | None) -> Any:
    """The process's session for a detector network (each MTCNN stage, YuNet); options: see
    maskid.networks.tensorrt, where they were chosen by measurement (MTCNN's three nets differ
    by < 1 ms between optimisation levels)."""
    import onnxruntime as ort

    from maskid.networks.tensorrt import GRAPH_OPTIMIZATION, shared_session

    if not path.is_file():
        raise ModelError(f"detector model missing: {path}")
    chosen = list(providers or ["CPUExecutionProvider"])

    def make() -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        # Spinning worker threads fight the Python thread (and other processes) on 2 cores.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), sess_options=so, providers=chosen)

    try:
        return shared_session(path, chosen, threads, make)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ModelError(f"cannot load detector model {path}: {e}") from e
