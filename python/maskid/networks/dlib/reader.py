"""Reader for dlib's serialized DNN files (`dlib::serialize(net)`), enough for the face ResNet.

dlib writes a network outermost-first: the loss record, then every layer's version int
(each add_layer serializes its version before its whole sub-network), then the input layer,
then the layer records from the bottom up. Tag and skip layers write only a version int, so
which layers they join comes from the network definition (`FACE_RESNET_V1`), not the file;
the version ints (1 for tag/skip, 2 for a layer, 3 for the bottom layer) are checked
against that definition so a different network is refused instead of misread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from maskid.errors import ModelError

# --- layer records (bottom-up; tensors are float32) -------------------------------------


@dataclass(frozen=True)
class Conv:
    weight: np.ndarray  # O x I x kh x kw
    bias: np.ndarray  # O
    stride: tuple[int, int]  # (y, x)
    pad: tuple[int, int]  # (y, x)


@dataclass(frozen=True)
class Affine:
    """Per-channel y = gamma * x + beta (dlib's affine_, or a bn_con folded into one)."""

    gamma: np.ndarray
    beta: np.ndarray


@dataclass(frozen=True)
class Relu:
    pass


@dataclass(frozen=True)
class Pool:
    kind: str  # "max" or "avg"
    size: tuple[int, int]  # (0, 0) = the whole map (dlib's *_pool_everything)
    stride: tuple[int, int]
    pad: tuple[int, int]


@dataclass(frozen=True)
class Tag:
    id: int


@dataclass(frozen=True)
class Skip:
    """Continue from the output of the nearest tag `id` below."""

    id: int


@dataclass(frozen=True)
class AddPrev:
    """Add the output of tag `id`; sizes may differ (missing entries count as zero)."""

    id: int


@dataclass(frozen=True)
class Fc:
    weight: np.ndarray  # out x in (already transposed from dlib's in x out)
    bias: np.ndarray | None


Layer = Conv | Affine | Relu | Pool | Tag | Skip | AddPrev | Fc


@dataclass(frozen=True)
class DlibNet:
    loss: str
    loss_params: tuple[float, ...]
    input_means: tuple[float, float, float]  # R, G, B
    input_size: tuple[int, int]  # rows, cols
    layers: list[Layer] = field(default_factory=list)  # bottom-up

    @property
    def output_dim(self) -> int:
        last = self.layers[-1]
        if not isinstance(last, Fc):
            raise ModelError("dlib network does not end in an fc layer")
        return int(last.weight.shape[0])


# --- network definition (dlib/examples/dnn_face_recognition_ex.cpp) ---------------------
# Layer kinds bottom-up; "tagN"/"skipN"/"addN" are structure, the rest are file records.


def _ares(_n: int) -> list[str]:
    return ["tag1", "con", "affine", "relu", "con", "affine", "add1", "relu"]


def _ares_down(_n: int) -> list[str]:
    return [
        "tag1", "con", "affine", "relu", "con", "affine",
        "tag2", "skip1", "avg_pool", "add2", "relu",
    ]  # fmt: skip


def _face_resnet_v1() -> list[str]:
    kinds = ["con", "affine", "relu", "max_pool"]
    for _ in range(3):
        kinds += _ares(32)
    kinds += _ares_down(64) + _ares(64) + _ares(64) + _ares(64)
    kinds += _ares_down(128) + _ares(128) + _ares(128)
    kinds += _ares_down(256) + _ares(256) + _ares(256)
    kinds += _ares_down(256)
    return [*kinds, "avg_pool", "fc"]


FACE_RESNET_V1 = _face_resnet_v1()
_STRUCTURAL = ("tag", "skip", "add")

# --- primitive decoding -----------------------------------------------------------------


class _Stream:
    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.pos = 0
        self.name = name

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ModelError(
                f"{self.name}: truncated dlib model file (ends at byte {len(self.data)})"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def read_int(self) -> int:
        control = self._take(1)[0]
        n = control & 0x0F
        if n > 8 or control & 0x70:
            raise ModelError(
                f"{self.name}: corrupt dlib model file (bad integer at byte {self.pos - 1})"
            )
        value = int.from_bytes(self._take(n), "little")
        return -value if control & 0x80 else value

    def read_float(self) -> float:
        mantissa, exponent = self.read_int(), self.read_int()
        specials = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        if exponent in specials:
            return specials[exponent]
        return math.ldexp(mantissa, exponent)

    def read_bool(self) -> bool:
        c = self._take(1)
        if c not in (b"0", b"1"):
            raise ModelError(
                f"{self.name}: corrupt dlib model file (bad bool at byte {self.pos - 1})"
            )
        return c == b"1"

    def read_str(self) -> str:
        n = self.read_int()
        if not 0 <= n <= 256:
            raise ModelError(
                f"{self.name}: corrupt dlib model file (bad string at byte {self.pos})"
            )
        try:
            return self._take(n).decode("ascii")
        except UnicodeDecodeError:
            raise ModelError(
                f"{self.name}: corrupt dlib model file (bad string at byte {self.pos})"
            ) from None

    def read_tensor(self) -> np.ndarray:
        self.expect_version(2, "tensor")
        shape = tuple(self.read_int() for _ in range(4))
        if min(shape) < 0 or math.prod(shape) > len(self.data):
            raise ModelError(f"{self.name}: corrupt dlib model file (tensor shape {shape})")
        raw = self._take(4 * math.prod(shape))
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def read_alias(self) -> tuple[int, ...]:
        self.expect_version(1, "alias tensor")
        return tuple(self.read_int() for _ in range(4))

    def expect_version(self, want: int, what: str) -> None:
        got = self.read_int()
        if got != want:
            raise ModelError(
                f"{self.name}: unsupported dlib {what} version {got} (expected {want})"
            )


# --- layer records ----------------------------------------------------------------------


def _read_con(s: _Stream) -> Conv:
    params = s.read_tensor().reshape(-1)
    num_filters, nr, nc = s.read_int(), s.read_int(), s.read_int()
    stride = (s.read_int(), s.read_int())
    pad = (s.read_int(), s.read_int())
    filters, _biases = s.read_alias(), s.read_alias()
    for _ in range(4):  # learning-rate / weight-decay multipliers
        s.read_float()
    n_w = math.prod(filters)
    if filters[0] != num_filters or filters[2:] != (nr, nc) or params.size != n_w + num_filters:
        raise ModelError(
            f"{s.name}: inconsistent con layer (filters {filters}, {params.size} params)"
        )
    weight = params[:n_w].reshape(filters)
    return Conv(weight.copy(), params[n_w:].copy(), stride, pad)


def _read_affine(s: _Stream) -> Affine:
    params = s.read_tensor().reshape(-1)
    gamma, beta = s.read_alias(), s.read_alias()
    s.read_int()  # mode (conv / fc): per-channel either way for this network
    k = math.prod(gamma)
    if math.prod(beta) != k or params.size != 2 * k:
        raise ModelError(f"{s.name}: inconsistent affine layer ({params.size} params)")
    return Affine(params[:k].copy(), params[k:].copy())


def _read_bn_con(s: _Stream) -> Affine:
    """Batch norm in inference mode, folded to an affine the way dlib's affine_(bn_) does."""
    params = s.read_tensor().reshape(-1)
    s.read_alias(), s.read_alias()
    s.read_tensor(), s.read_tensor()  # batch means / invstds (training state)
    running_means, running_vars = s.read_tensor().reshape(-1), s.read_tensor().reshape(-1)
    s.read_int(), s.read_int()  # num_updates, running_stats_window_size
    for _ in range(4):
        s.read_float()
    eps = s.read_float()
    k = running_means.size
    if params.size != 2 * k or running_vars.size != k:
        raise ModelError(f"{s.name}: inconsistent bn_con layer ({params.size} params)")
    gamma = params[:k] / np.sqrt(running_vars + np.float32(eps))
    beta = params[k:] - gamma * running_means
    return Affine(gamma.astype(np.float32), beta.astype(np.float32))


def _read_pool(s: _Stream, kind: str) -> Pool:
    size = (s.read_int(), s.read_int())
    stride = (s.read_int(), s.read_int())
    pad = (s.read_int(), s.read_int())
    return Pool(kind, size, stride, pad)


def _read_fc(s: _Stream, version: str) -> Fc:
    num_outputs, num_inputs = s.read_int(), s.read_int()
    params = s.read_tensor().reshape(-1)
    s.read_alias(), s.read_alias()
    bias_mode = s.read_int()  # 0 = has bias, 1 = no bias
    for _ in range(4):
        s.read_float()
    use_bias = s.read_bool() if version == "fc_3" else True
    has_bias = bias_mode == 0 and use_bias
    n_w = num_inputs * num_outputs
    if params.size != n_w + (num_outputs if has_bias else 0):
        raise ModelError(f"{s.name}: inconsistent fc layer ({params.size} params)")
    weight = params[:n_w].reshape(num_inputs, num_outputs).T.copy()
    return Fc(weight, params[n_w:].copy() if has_bias else None)


_RECORDS: dict[str, tuple[str, Callable[[_Stream], Layer | None]]] = {
    "con_4": ("con", _read_con),
    "con_5": ("con", _read_con),
    "affine_": ("affine", _read_affine),
    "affine_2": ("affine", _read_affine),
    "bn_con2": ("affine", _read_bn_con),
    "relu_": ("relu", lambda s: Relu()),
    "max_pool_2": ("max_pool", lambda s: _read_pool(s, "max")),
    "avg_pool_2": ("avg_pool", lambda s: _read_pool(s, "avg")),
    "add_prev_": ("add", lambda s: None),
    "fc_2": ("fc", lambda s: _read_fc(s, "fc_2")),
    "fc_3": ("fc", lambda s: _read_fc(s, "fc_3")),
}


def _read_record(s: _Stream, want_kind: str) -> Layer | None:
    at = s.pos
    name = s.read_str()
    if name not in _RECORDS:
        raise ModelError(f"{s.name}: unsupported dlib layer '{name}' at byte {at}")
    kind, read = _RECORDS[name]
    if kind != want_kind.rstrip("0123456789"):
        raise ModelError(f"{s.name}: found '{name}' where the network has a {want_kind} layer")
    layer = read(s)
    for _ in range(3):  # setup-called / gradient-stale / output-disabled flags
        s.read_bool()
    for _ in range(3):  # x_grad, cached_output, params_grad (training state)
        s.read_tensor()
    return layer


def _read_input(s: _Stream) -> tuple[tuple[float, float, float], tuple[int, int]]:
    name = s.read_str()
    if name != "input_rgb_image_sized":
        raise ModelError(f"{s.name}: unsupported dlib input layer '{name}'")
    means = (s.read_float(), s.read_float(), s.read_float())
    return means, (s.read_int(), s.read_int())


def read_dlib_net(path: str | Path, definition: list[str] | None = None) -> DlibNet:
    """Parse a dlib metric-learning network file into layer records (bottom-up).

    Raises ModelError for a truncated or corrupt file, or one that is not this network.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read dlib model {path}: {e.strerror}") from None
    kinds = definition or FACE_RESNET_V1
    s = _Stream(data, path.name)

    s.expect_version(1, "loss layer")
    loss = s.read_str()
    if loss != "loss_metric_2":
        raise ModelError(f"{s.name}: not a dlib metric network (loss record '{loss[:40]}')")
    loss_params = (s.read_float(), s.read_float())  # margin, distance threshold

    # Version ints, top-down: 1 for tag/skip, 2 for a layer, 3 for the bottom layer.
    expected = [1 if k.startswith(("tag", "skip")) else 2 for k in reversed(kinds)]
    expected[-1] = 3
    got = [s.read_int() for _ in expected]
    if got != expected:
        raise ModelError(f"{s.name}: layer structure does not match dlib's face ResNet v1")

    means, size = _read_input(s)
    layers: list[Layer] = []
    for i, kind in enumerate(kinds):
        if kind.startswith(("tag", "skip")):
            ident = int(kind[-1])
            layers.append(Tag(ident) if kind.startswith("tag") else Skip(ident))
            continue
        rec = _read_record(s, kind)
        if i == 0:
            s.read_int()  # the bottom layer also stores the sample expansion factor
        if kind.startswith("add"):
            layers.append(AddPrev(int(kind[-1])))
        elif rec is not None:
            layers.append(rec)
    if s.pos != len(data):
        raise ModelError(f"{s.name}: {len(data) - s.pos} unexpected bytes after the network")
    return DlibNet(loss, loss_params, means, size, layers)


# --- weights in and out (for fine-tuned copies of the network) ---------------------------
def weight_arrays(net: DlibNet) -> list[np.ndarray]:
    """Every parameter tensor, bottom-up: conv weight, bias; affine gamma, beta; fc weight."""
    out: list[np.ndarray] = []
    for layer in net.layers:
        if isinstance(layer, Conv):
            out += [layer.weight, layer.bias]
        elif isinstance(layer, Affine):
            out += [layer.gamma, layer.beta]
        elif isinstance(layer, Fc):
            out += [layer.weight] if layer.bias is None else [layer.weight, layer.bias]
    return out


def with_weights(net: DlibNet, arrays: list[np.ndarray]) -> DlibNet:
    """A copy of `net` whose parameters are `arrays` (order and shapes of `weight_arrays`)."""
    old = weight_arrays(net)
    if len(arrays) != len(old) or any(a.shape != b.shape for a, b in zip(arrays, old, strict=True)):
        raise ModelError("weights do not fit the dlib face ResNet layout")
    it = iter(np.asarray(a, dtype=np.float32) for a in arrays)
    layers: list[Layer] = []
    for layer in net.layers:
        if isinstance(layer, Conv):
            layer = replace(layer, weight=next(it), bias=next(it))
        elif isinstance(layer, Affine):
            layer = replace(layer, gamma=next(it), beta=next(it))
        elif isinstance(layer, Fc):
            layer = replace(layer, weight=next(it), bias=None if layer.bias is None else next(it))
        layers.append(layer)
    return replace(net, layers=layers)
