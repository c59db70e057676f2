"""EdgeFace (Idiap's EdgeNeXt face embedders, XS / XXS) as maskid's own torch module.

The checkpoints (`edgeface_xs_q.pt`, `edgeface_xxs_q.pt`) are PyTorch state dicts of a timm
EdgeNeXt whose classifier was reset to a 512-d embedding; every Linear is stored as a dynamic
int8 quantized Linear (per-tensor int8 weight, float bias). This module rebuilds the network
from the state dict alone (widths, depths, kernel sizes, block kinds, heads, split widths and the
positional encoding are all read off the tensor shapes) and loads it either with the int8 weights
dequantized to float (`load_edgeface(path)`, what the ONNX export is made from) or with the
original dynamic-quantized Linear layers (`load_edgeface(path, quantized=True)`, the checkpoint as
it runs in torch; it also quantizes the activations on the fly, so it is a close, not an exact,
reference for the float module).

Layout (names match the checkpoint's keys after the leading ``model.``):

    stem          Conv2d(3, C0, 4, stride 4) -> LayerNorm over channels (channels-first)
    stages.i      downsample (i > 0): LayerNorm over channels -> Conv2d(Ci-1, Ci, 2, stride 2)
                  blocks: conv encoders, then one split depth-wise transpose attention block
    head          global average pool -> LayerNorm over channels -> Linear(C3, 512)

Conv encoder (``conv_dw, norm, mlp.fc1, mlp.fc2, gamma``): x + gamma * MLP(LN(dwconv_k(x))),
the LayerNorm and MLP run channels-last. Split depth-wise transpose attention (``convs.K,
pos_embd, norm_xca, xca, gamma_xca, norm, mlp, gamma``): the channels are cut into S groups of
ceil(C/S); group 0 goes through a 3x3 depth-wise conv, each next group is added to the previous
output before its own conv, the last group passes through; then (optional Fourier positional
encoding of the grid, 1x1-projected) cross-covariance attention over channels (per head: q, k
L2-normalised along the tokens, softmax(q k^T * temperature_h) v), then the same inverted
bottleneck as the conv encoder. All LayerNorms use eps 1e-6; GELU is the exact (erf) one.

Spatial maps for a 112 x 112 input: stem 28 x 28, stage outputs 28, 14, 7 and 3 (the last
downsample (2 x 2, stride 2) of the 7 x 7 map drops its last row and column). `features(x)`
returns the last map, N x C3 x 3 x 3 (C3 = 192 for XS, 168 for XXS); `stage_features(x)`
returns all four (stage 2: N x C2 x 7 x 7, C2 = 100 XS / 88 XXS); `head(f)` maps the last map
to the 512-d descriptor, so ``model(x) == model.head(model.features(x))``. The input is the
normalised chip, (RGB - 127.5) / 127.5.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from maskid.errors import ModelError

LN_EPS = 1e-6
POS_TEMPERATURE = 10000.0
_PACKED = "._packed_params._packed_params"


# --- configuration, read off a state dict --------------------------------------------------


@dataclass(frozen=True)
class BlockSpec:
    """One block: a conv encoder ("conv") or a split depth-wise transpose attention ("sdta")."""

    kind: str
    dim: int
    hidden: int  # MLP width
    kernel: int = 0  # conv encoder: depth-wise kernel
    groups: int = 0  # sdta: channel groups (convs + 1)
    width: int = 0  # sdta: channels per group
    heads: int = 0  # sdta: attention heads
    pos_hidden: int = 0  # sdta: Fourier features per axis (0: no positional encoding)


@dataclass(frozen=True)
class EdgeFaceConfig:
    in_chans: int
    stem_kernel: int
    dims: tuple[int, ...]
    stages: tuple[tuple[BlockSpec, ...], ...]
    embedding_dim: int

    @property
    def feature_dim(self) -> int:
        return self.dims[-1]


def _shape(sd: dict[str, Any], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ModelError(f"EdgeFace state dict: missing {key!r}")
    value = sd[key]
    if isinstance(value, tuple):  # packed (int8 weight, bias)
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise ModelError(f"EdgeFace state dict: {key!r} is a {type(value).__name__}, not a tensor")
    return tuple(value.shape)


def _linear_shape(sd: dict[str, Any], prefix: str) -> tuple[int, int]:
    """(out, in) of a Linear stored either packed (quantized) or as a float weight."""
    key = prefix + _PACKED if prefix + _PACKED in sd else prefix + ".weight"
    shape = _shape(sd, key)
    if len(shape) != 2:
        raise ModelError(f"EdgeFace state dict: {key!r} has shape {shape}, expected 2-d")
    return shape[0], shape[1]


def config_from_state_dict(sd: dict[str, Any]) -> EdgeFaceConfig:
    """Derive the architecture from the tensor shapes (keys without the ``model.`` prefix)."""
    stem = _shape(sd, "stem.0.weight")
    if len(stem) != 4 or stem[2] != stem[3]:
        raise ModelError(f"EdgeFace state dict: stem.0.weight has shape {stem}")
    dims = [stem[0]]
    block_ids: dict[int, set[int]] = {}
    for key in sd:
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            block_ids.setdefault(int(m[1]), set()).add(int(m[2]))
    if sorted(block_ids) != list(range(len(block_ids))) or not block_ids:
        raise ModelError(f"EdgeFace state dict: stages {sorted(block_ids)} are not 0..n-1")
    stages = []
    for s in range(len(block_ids)):
        if sorted(block_ids[s]) != list(range(len(block_ids[s]))):
            raise ModelError(f"EdgeFace state dict: stage {s} blocks are not numbered 0..n-1")
        if s > 0:
            down = _shape(sd, f"stages.{s}.downsample.1.weight")
            if len(down) != 4 or down[1] != dims[-1]:
                raise ModelError(f"EdgeFace state dict: stages.{s}.downsample.1 shape {down}")
            dims.append(down[0])
        dim = dims[-1]
        blocks = []
        for b in range(len(block_ids[s])):
            p = f"stages.{s}.blocks.{b}."
            hidden, _ = _linear_shape(sd, p + "mlp.fc1")
            if p + "gamma_xca" in sd:
                convs = sorted(
                    int(m[1])
                    for k in sd
                    if (m := re.match(re.escape(p) + r"convs\.(\d+)\.weight$", k))
                )
                if not convs or convs != list(range(len(convs))):
                    raise ModelError(f"EdgeFace state dict: {p}convs are missing or misnumbered")
                width = _shape(sd, p + "convs.0.weight")[0]
                heads = _shape(sd, p + "xca.temperature")[0]
                pos = p + "pos_embd.token_projection.weight"
                pos_in = _shape(sd, pos)[1] if pos in sd else 0
                if pos_in % 2:
                    raise ModelError(f"EdgeFace state dict: {pos} takes {pos_in} channels")
                spec = BlockSpec(
                    "sdta",
                    dim,
                    hidden,
                    groups=len(convs) + 1,
                    width=width,
                    heads=heads,
                    pos_hidden=pos_in // 2,
                )
                if (
                    math.ceil(dim / width) != spec.groups
                    or math.ceil(dim / spec.groups) != width
                    or dim % heads
                ):
                    raise ModelError(
                        f"EdgeFace state dict: {p} splits {dim} channels into groups of {width} "
                        f"({spec.groups} groups, {heads} heads): inconsistent"
                    )
            else:
                k = _shape(sd, p + "conv_dw.weight")
                if len(k) != 4 or k[2] != k[3] or k[2] % 2 == 0:
                    raise ModelError(f"EdgeFace state dict: {p}conv_dw.weight has shape {k}")
                spec = BlockSpec("conv", dim, hidden, kernel=k[2])
            blocks.append(spec)
        stages.append(tuple(blocks))
    out_dim, in_dim = _linear_shape(sd, "head.fc")
    if in_dim != dims[-1]:
        raise ModelError(
            f"EdgeFace state dict: head.fc takes {in_dim} features, the last stage gives {dims[-1]}"
        )
    return EdgeFaceConfig(
        in_chans=stem[1],
        stem_kernel=stem[2],
        dims=tuple(dims),
        stages=tuple(stages),
        embedding_dim=out_dim,
    )


# --- modules -------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an N x C x H x W map."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvEncoder(nn.Module):
    """x + gamma * MLP(LN(depth-wise conv(x))), LN and MLP channels-last."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        dim = spec.dim
        self.conv_dw = nn.Conv2d(dim, dim, spec.kernel, padding=spec.kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, spec.hidden)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.mlp(self.norm(y))
        return x + y.permute(0, 3, 1, 2)


class FourierPosition(nn.Module):
    """Sine/cosine encoding of the normalised (row, col) grid, projected to `dim` by a 1x1 conv."""

    def __init__(self, hidden: int, dim: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.token_projection = nn.Conv2d(2 * hidden, dim, kernel_size=1)

    def forward(self, h: int, w: int) -> torch.Tensor:
        """(1, dim, h, w); depends on the grid size only. The size is taken as a Python int, so
        an ONNX trace (fixed H x W input) holds the encoding as a constant (torch emits a
        TracerWarning about exactly that; the exporter silences it)."""
        h, w = int(h), int(w)
        dev = self.token_projection.weight.device
        ys = torch.arange(1, h + 1, dtype=torch.float32, device=dev)
        xs = torch.arange(1, w + 1, dtype=torch.float32, device=dev)
        ys = ys / (ys[-1:] + LN_EPS) * (2 * math.pi)
        xs = xs / (xs[-1:] + LN_EPS) * (2 * math.pi)
        i = torch.arange(self.hidden, dtype=torch.float32, device=dev)
        freq = POS_TEMPERATURE ** (2 * torch.div(i, 2, rounding_mode="floor") / self.hidden)

        def encode(t: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, hidden): sin, cos interleaved
            a = t[:, None] / freq
            return torch.stack((a[:, 0::2].sin(), a[:, 1::2].cos()), dim=2).flatten(1)

        py = encode(ys)[:, None, :].expand(h, w, self.hidden)
        px = encode(xs)[None, :, :].expand(h, w, self.hidden)
        grid = torch.cat((py, px), dim=2).permute(2, 0, 1)[None]
        return self.token_projection(grid)


class CrossCovarianceAttention(nn.Module):
    """XCA: attention between channels; per head softmax(norm(q) norm(k)^T * t_h) v, with q, k
    L2-normalised along the tokens."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (b, heads, c/heads, n)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        y = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)
        return self.proj(y)


class SplitTransposeAttention(nn.Module):
    """Split depth-wise transpose attention block (EdgeNeXt's SDTA)."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        dim, width = spec.dim, spec.width
        self.width = width
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(spec.groups - 1)
        )
        self.pos_embd = FourierPosition(spec.pos_hidden, dim) if spec.pos_hidden else None
        self.norm_xca = nn.LayerNorm(dim, eps=LN_EPS)
        self.gamma_xca = nn.Parameter(torch.ones(dim))
        self.xca = CrossCovarianceAttention(dim, spec.heads)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, spec.hidden)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        parts = torch.split(x, self.width, dim=1)
        outs = []
        y = parts[0]
        for i, conv in enumerate(self.convs):
            if i > 0:
                y = y + parts[i]
            y = conv(y)
            outs.append(y)
        outs.append(parts[-1])
        t = torch.cat(outs, dim=1).reshape(b, c, h * w).permute(0, 2, 1)  # (b, tokens, c)
        if self.pos_embd is not None:
            t = t + self.pos_embd(h, w).reshape(1, c, h * w).permute(0, 2, 1)
        t = t + self.gamma_xca * self.xca(self.norm_xca(t))
        t = self.gamma * self.mlp(self.norm(t))  # (b, tokens, c)
        return x + t.permute(0, 2, 1).reshape(b, c, h, w)


class Stage(nn.Module):
    def __init__(self, in_dim: int, specs: tuple[BlockSpec, ...], downsample: bool) -> None:
        super().__init__()
        dim = specs[0].dim
        self.downsample: nn.Module = (
            nn.Sequential(LayerNorm2d(in_dim), nn.Conv2d(in_dim, dim, 2, stride=2))
            if downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *(ConvEncoder(s) if s.kind == "conv" else SplitTransposeAttention(s) for s in specs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class Head(nn.Module):
    """Global average pool -> LayerNorm over channels -> Linear to the descriptor."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.fc = nn.Linear(dim, out_dim)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(f.mean(dim=(2, 3))))


class EdgeFace(nn.Module):
    """EdgeNeXt backbone + EdgeFace's 512-d head. Input: N x 3 x 112 x 112, (RGB - 127.5) / 127.5.

    `features(x)` -> N x C3 x 3 x 3 (last spatial map, before pooling); `head(f)` -> N x 512;
    `stage_features(x)` -> the four stage maps (28, 14, 7, 3 for a 112 input)."""

    def __init__(self, config: EdgeFaceConfig) -> None:
        super().__init__()
        self.config = config
        c0, k = config.dims[0], config.stem_kernel
        self.stem = nn.Sequential(nn.Conv2d(config.in_chans, c0, k, stride=k), LayerNorm2d(c0))
        in_dims = (c0, *config.dims[:-1])
        self.stages = nn.Sequential(
            *(
                Stage(d, specs, i > 0)
                for i, (d, specs) in enumerate(zip(in_dims, config.stages, strict=True))
            )
        )
        self.head = Head(config.feature_dim, config.embedding_dim)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --- loading -------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's state dict with the ``model.`` prefix removed (packed int8 Linears kept
    as they are). Raises ModelError for a missing, unreadable or non-EdgeFace file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"EdgeFace checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about its own quantized storage formats
            warnings.simplefilter("ignore")
            raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ModelError(
            f"EdgeFace checkpoint {path} is corrupt or not a PyTorch file ({e})"
        ) from None
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not raw:
        raise ModelError(f"EdgeFace checkpoint {path} does not hold a state dict")
    return {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in raw.items()}


def dequantized_state_dict(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Packed dynamic-int8 Linears -> float ``weight`` (int8 dequantized) and ``bias``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(_PACKED):
            prefix = key[: -len(_PACKED)]
            if not (
                isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], torch.Tensor)
            ):
                raise ModelError(
                    f"EdgeFace state dict: {key!r} is not a packed (weight, bias) pair"
                )
            weight, bias = value
            if not weight.is_quantized:
                raise ModelError(f"EdgeFace state dict: {key!r} holds an unquantized weight")
            out[prefix + ".weight"] = weight.dequantize()
            out[prefix + ".bias"] = (
                bias.detach() if bias is not None else torch.zeros(weight.shape[0])
            )
        elif key.endswith(("._packed_params.dtype", ".scale", ".zero_point")):
            continue  # the dynamic Linear's output qparams: unused by a dynamic Linear
        elif isinstance(value, torch.Tensor):
            out[key] = value.detach()
        else:
            raise ModelError(
                f"EdgeFace state dict: unexpected entry {key!r} ({type(value).__name__})"
            )
    return out


def _load(module: nn.Module, sd: dict[str, Any], what: str) -> None:
    try:
        result = module.load_state_dict(sd, strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines()]
        msg = "; ".join(ln for ln in lines if ln and not ln.startswith("Error(s) in loading"))
        raise ModelError(
            f"{what}: the state dict does not fit the EdgeFace layout it implies ({msg})"
        ) from None
    if result.missing_keys or result.unexpected_keys:  # pragma: no cover - strict raises first
        raise ModelError(
            f"{what}: missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )


def _quantize_linears(module: nn.Module, sd: dict[str, Any], prefix: str = "") -> None:
    """Swap every nn.Linear for a torch dynamic-int8 Linear holding the checkpoint's packed
    (int8 weight, bias) as they are."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    for name, child in module.named_children():
        key = f"{prefix}{name}"
        if isinstance(child, nn.Linear):
            packed = sd.get(key + _PACKED)
            if packed is None:
                raise ModelError(f"EdgeFace state dict: {key} is not a dynamic-quantized Linear")
            weight, bias = packed
            q = DynamicLinear(child.in_features, child.out_features, dtype=torch.qint8)
            q.set_weight_bias(weight, bias)
            setattr(module, name, q)
        else:
            _quantize_linears(child, sd, key + ".")


def edgeface_from_state_dict(
    sd: dict[str, Any], quantized: bool = False, what: str = "EdgeFace"
) -> EdgeFace:
    """Build and load an EdgeFace from a (prefix-stripped) checkpoint state dict. The float load
    checks every name and shape; quantized=True then swaps in the packed int8 Linears."""
    model = EdgeFace(config_from_state_dict(sd))
    _load(model, dequantized_state_dict(sd), what)
    if quantized:
        _quantize_linears(model, sd)
    return model.eval()


def load_edgeface(path: str | Path, quantized: bool = False) -> EdgeFace:
    """EdgeFace from a checkpoint, in eval mode.

    quantized=False: int8 Linear weights dequantized to float (exactly w.dequantize()); the
    module that is exported to ONNX. quantized=True: the Linears stay torch dynamic-int8 Linears
    holding the checkpoint's packed params, i.e. the checkpoint as it runs in torch (its
    activations are quantized per call too, so it differs slightly from the float module)."""
    return edgeface_from_state_dict(
        read_checkpoint(path), quantized=quantized, what=f"EdgeFace {Path(path).name}"
    )
