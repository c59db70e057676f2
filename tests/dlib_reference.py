"""What the parity tests share: dlib (the reference, never the product) and its model files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

dlib = pytest.importorskip("dlib", reason="dlib (dlib-bin) is the reference implementation")
frm = pytest.importorskip("face_recognition_models", reason="needs the dlib model files")
MODELS = Path(frm.__file__).parent / "models"


def rgb(path: Path, pad: float = 0.0) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    if pad:  # tight crops need context before dlib's HOG detector finds the face
        b = int(pad * img.shape[0])
        img = cv2.copyMakeBorder(img, b, b, b, b, cv2.BORDER_REPLICATE)
    return img
