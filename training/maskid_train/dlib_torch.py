"""dlib's face ResNet v1 as a PyTorch module, for training and export (not used at runtime).

`features(x)` is the trunk (N x 256 x h x w before global pooling) so training code can
pool the late feature maps its own way (e.g. weighted towards the eyes); `forward` is
dlib's global average pool + fc. Inputs are RGB pixel values 0..255, NCHW float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskid.errors import ModelError
from maskid.networks.dlib.reader import (
    AddPrev,
    Affine,
    Conv,
    DlibNet,
    Fc,
    Layer,
    Pool,
    Relu,
    Skip,
    Tag,
    read_dlib_net,
)


class AffineChannel(nn.Module):
    """Per-channel y = gamma * x + beta (dlib's affine layer: a frozen batch norm)."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.from_numpy(gamma.copy()).view(1, -1, 1, 1))
        self.beta = nn.Parameter(torch.from_numpy(beta.copy()).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


def _conv(c: Conv) -> nn.Conv2d:
    o, i, kh, kw = c.weight.shape
    conv = nn.Conv2d(i, o, (kh, kw), stride=c.stride, padding=c.pad)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(c.weight))
        assert conv.bias is not None
        conv.bias.copy_(torch.from_numpy(c.bias))
    return conv


def add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add of unequal tensors: missing channels/rows/cols count as zero (pad at end)."""
    c, h, w = (max(s, t) for s, t in zip(a.shape[1:], b.shape[1:], strict=True))

    def pad(t: torch.Tensor) -> torch.Tensor:
        if t.shape[1:] == (c, h, w):
            return t
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class ResBlock(nn.Module):
    """conv-affine-relu-conv-affine plus shortcut, then relu; a down block's shortcut is a
    2x2/2 average pool and its branches may differ in size and channels."""

    def __init__(self, conv1: Conv, aff1: Affine, conv2: Conv, aff2: Affine, down: Pool | None):
        super().__init__()
        self.conv1, self.aff1 = _conv(conv1), AffineChannel(aff1.gamma, aff1.beta)
        self.conv2, self.aff2 = _conv(conv2), AffineChannel(aff2.gamma, aff2.beta)
        self.down = down is not None
        self.pool = (down.size, down.stride, down.pad) if down is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        if self.pool is None:
            return F.relu(y + x)
        size, stride, pad = self.pool
        return F.relu(add_padded(y, F.avg_pool2d(x, size, stride, pad)))


class _Cursor:
    """Walks the reader's bottom-up records, checking each against the expected pattern."""

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers, self.i = list(layers), 0

    def take(self, cls: type, **fields: object) -> Layer:
        if self.i >= len(self.layers):
            raise ModelError("dlib network ends early for the face ResNet layout")
        layer = self.layers[self.i]
        if not isinstance(layer, cls) or any(getattr(layer, k) != v for k, v in fields.items()):
            raise ModelError(f"unexpected dlib layer {layer!r:.60} at position {self.i}")
        self.i += 1
        return layer

    def peek(self) -> Layer | None:
        return self.layers[self.i] if self.i < len(self.layers) else None


class DlibResNet(nn.Module):
    mean: torch.Tensor

    def __init__(self, net: DlibNet) -> None:
        super().__init__()
        cur = _Cursor(net.layers)
        self.register_buffer("mean", torch.tensor(net.input_means).view(1, 3, 1, 1))
        self.input_size = net.input_size
        stem_conv = cur.take(Conv)
        stem_aff = cur.take(Affine)
        cur.take(Relu)
        pool = cur.take(Pool, kind="max")
        assert isinstance(stem_conv, Conv) and isinstance(stem_aff, Affine)
        assert isinstance(pool, Pool)
        self.stem = nn.Sequential(
            _conv(stem_conv),
            AffineChannel(stem_aff.gamma, stem_aff.beta),
            nn.ReLU(),
            nn.MaxPool2d(pool.size, pool.stride, pool.pad),
        )
        blocks = []
        while isinstance(cur.peek(), Tag):
            cur.take(Tag, id=1)
            c1, a1 = cur.take(Conv), cur.take(Affine)
            cur.take(Relu)
            c2, a2 = cur.take(Conv), cur.take(Affine)
            down = None
            if isinstance(cur.peek(), Tag):
                cur.take(Tag, id=2), cur.take(Skip, id=1)
                down = cur.take(Pool, kind="avg")
                cur.take(AddPrev, id=2)
            else:
                cur.take(AddPrev, id=1)
            cur.take(Relu)
            blocks.append(ResBlock(c1, a1, c2, a2, down))  # type: ignore[arg-type]
        self.blocks = nn.Sequential(*blocks)
        cur.take(Pool, kind="avg", size=(0, 0))
        fc = cur.take(Fc)
        assert isinstance(fc, Fc)
        self.fc = nn.Linear(fc.weight.shape[1], fc.weight.shape[0], bias=fc.bias is not None)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(fc.weight))
            if fc.bias is not None and self.fc.bias is not None:
                self.fc.bias.copy_(torch.from_numpy(fc.bias))
        if cur.peek() is not None:
            raise ModelError("dlib network has layers after the fc layer")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """RGB 0..255 NCHW -> the last feature map (N x 256 x h x w), before pooling."""
        x = (x - self.mean) / 256.0
        return self.blocks(self.stem(x))

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global average pool + fc: what dlib does after the trunk."""
        return self.fc(fmap.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_pretrained(dat_path: str | Path | None = None) -> DlibResNet:
    """dlib's pretrained weights (the .dat from face_recognition_models by default), eval mode."""
    if dat_path is None:
        from maskid.networks.registry import dlib_dat_path

        dat_path = dlib_dat_path()
    return DlibResNet(read_dlib_net(dat_path)).eval()


def weight_arrays_of(model: DlibResNet) -> list[np.ndarray]:
    """The module's parameters in `reader.weight_arrays` order (to write a trained copy back)."""
    mods: list[nn.Module] = [model.stem[0], model.stem[1]]
    for block in model.blocks:
        assert isinstance(block, ResBlock)
        mods += [block.conv1, block.aff1, block.conv2, block.aff2]
    out: list[np.ndarray] = []
    for m in mods:
        if isinstance(m, nn.Conv2d):
            assert m.bias is not None
            out += [m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()]
        elif isinstance(m, AffineChannel):
            out += [m.gamma.detach().numpy().ravel().copy(), m.beta.detach().numpy().ravel().copy()]
    out.append(model.fc.weight.detach().numpy().copy())
    if model.fc.bias is not None:
        out.append(model.fc.bias.detach().numpy().copy())
    return out
