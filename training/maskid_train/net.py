"""The student: dlib's face ResNet (pretrained) with spatial eye-region gates.

Gate (on a late feature map f, C x H x W):

    f * (1 + tanh(w * P + conv1x1(f)))

P is a fixed periocular prior (a Gaussian band over the rows where the eyes sit in a dlib chip:
y = (0.25 + 0.22) / 1.5 = 0.31 of the chip height), w a learnable scalar and conv1x1 (C -> 1) a
content-dependent term (it can learn to damp mask-covered cells). w and the conv start at zero,
so each gate is exactly the identity at init and the student starts as dlib's network.

Gate positions (dlib's trunk: stem -> 3 blocks @32x35x35 -> 4 @64x17x17 -> 3 @128x8x8 ->
4 @256x{4,2}): "g17" gates the 64-channel 17x17 map before stage 128, "g8" the 128-channel 8x8
map before stage 256 (the last map is 2x2, too coarse for a spatial prior).

CPU budget: the stem and stages 32/64 (`freeze_blocks` = 7 blocks) stay frozen, so a training
step runs them forward only; stages 128/256, the fc and the gates train.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from maskid_train.dlib_torch import DlibResNet, load_pretrained

EYE_ROW = (0.25 + 0.22) / 1.5  # eye height in a dlib chip with padding 0.25, fraction of side
GATE_SITES = {"g17": 7, "g8": 10}  # gate applied to the input of this block index


def periocular_prior(h: int, w: int, centre: float = EYE_ROW, sigma: float = 0.12) -> torch.Tensor:
    """(1,1,h,w) Gaussian band over the eye rows; 1 at the eye row, ~0 at the mouth."""
    y = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    band = torch.exp(-0.5 * ((y - centre) / sigma) ** 2)
    return band.view(1, 1, h, 1).expand(1, 1, h, w).contiguous()


class EyeGate(nn.Module):
    prior: torch.Tensor

    def __init__(self, channels: int, h: int, w: int) -> None:
        super().__init__()
        self.register_buffer("prior", periocular_prior(h, w))
        self.w = nn.Parameter(torch.zeros(()))
        self.conv = nn.Conv2d(channels, 1, 1, bias=True)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)  # type: ignore[arg-type]

    def gate(self, f: torch.Tensor) -> torch.Tensor:
        return 1.0 + torch.tanh(self.w * self.prior + self.conv(f))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f * self.gate(f)


def _shape_at(base: DlibResNet, block: int) -> tuple[int, int, int]:
    with torch.no_grad():
        x = base.stem(torch.zeros(1, 3, base.input_size[0], base.input_size[1]))
        x = base.blocks[:block](x)
    return int(x.shape[1]), int(x.shape[2]), int(x.shape[3])


class Student(nn.Module):
    """RGB 0..255 N x 3 x 150 x 150 -> N x 128 raw descriptor (normalisation inside)."""

    def __init__(
        self,
        base: DlibResNet | None = None,
        gates: tuple[str, ...] = ("g17", "g8"),
        freeze_blocks: int = 7,
    ) -> None:
        super().__init__()
        self.base = base if base is not None else load_pretrained()
        self.gate_names = tuple(gates)
        self.gates = nn.ModuleDict()
        for g in gates:
            if g not in GATE_SITES:
                raise ValueError(f"unknown gate site {g!r} (choose from {sorted(GATE_SITES)})")
            c, h, w = _shape_at(self.base, GATE_SITES[g])
            self.gates[g] = EyeGate(c, h, w)
        self._at = {GATE_SITES[g]: g for g in gates}
        self.freeze_blocks = freeze_blocks
        for p in self.base.stem.parameters():
            p.requires_grad_(False)
        for b in self.base.blocks[:freeze_blocks]:
            for p in b.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        h = base.stem((x - base.mean) / 256.0)
        for i, block in enumerate(base.blocks):
            if i in self._at:
                h = self.gates[self._at[i]](h)
            h = block(h)
        return base.head(h)

    def param_groups(self, lr_trunk: float, lr_new: float, wd: float) -> list[dict]:
        new = [p for p in self.gates.parameters() if p.requires_grad]
        trunk = [p for p in self.base.parameters() if p.requires_grad]
        return [
            {"params": trunk, "lr": lr_trunk, "weight_decay": wd},
            {"params": new, "lr": lr_new, "weight_decay": 0.0},
        ]

    def gate_summary(self) -> dict[str, float]:
        return {
            f"{g}_w": float(m.w.detach()) for g, m in self.gates.items() if isinstance(m, EyeGate)
        }


def build_student(variant: str, freeze_blocks: int = 7) -> Student:
    """'plain' (fine-tune, no gates), 'eyes' (g17 + g8), or a '+'-list of gate sites."""
    if variant == "plain":
        gates: tuple[str, ...] = ()
    elif variant == "eyes":
        gates = ("g17", "g8")
    else:
        gates = tuple(s for s in variant.split("+") if s)
    return Student(gates=gates, freeze_blocks=freeze_blocks)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
