"""Reader for OpenVINO IR v11 (an XML graph plus a .bin of constants), enough for OMZ's
face-reidentification-retail-0095 and networks built from the same operations.

The XML lists `<layer>`s (type, opset version, `<data>` attributes, numbered input/output
ports with their dims) and an `<edges>` section wiring output ports to input ports. A `Const`
names a byte range of the .bin (offset, size, element type, shape). The reader turns this into
an `IRGraph`: its layers in topological order, each with its parsed attributes, the names of
the layers feeding its inputs (in input-port order) and, for constants, a numpy array.

Compressed weights (`Const` f16 -> `Convert` f32, the IR's "decompression") are folded into
one `Const` holding the float32 values, which remembers that they were stored as f16 so a
writer can keep them at half size without losing anything.

Anything the reader does not understand is refused with a one-line `ModelError` (an unknown
operation, attribute or element type, a constant reaching beyond the .bin, another IR
version), never silently misread.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskid.errors import ModelError

IR_VERSION = 11

# IR element types -> little-endian numpy dtypes.
ELEMENT_TYPES: dict[str, str] = {
    "f16": "<f2",
    "f32": "<f4",
    "f64": "<f8",
    "i8": "i1",
    "u8": "u1",
    "i32": "<i4",
    "i64": "<i8",
}

Attr = tuple[int, ...] | str | bool


@dataclass(frozen=True)
class IRLayer:
    """One operation of the graph. Every supported operation has exactly one output
    (`Result` has none), so a layer's output is referred to by the layer's name."""

    name: str
    op: str  # OpenVINO type: "Convolution", "Add", ...
    attrs: Mapping[str, Attr]
    inputs: tuple[str, ...]  # producing layers, in input-port order
    shape: tuple[int, ...]  # output shape as the IR states it (batch 1); () for Result
    value: np.ndarray | None = None  # Const only
    stored_type: str | None = None  # Const only: element type in the .bin ("f16", ...)


@dataclass(frozen=True)
class IRGraph:
    name: str
    layers: list[IRLayer] = field(default_factory=list)  # topological order
    _by_name: dict[str, IRLayer] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {layer.name: layer for layer in self.layers})

    def layer(self, name: str) -> IRLayer:
        try:
            return self._by_name[name]
        except KeyError:
            raise ModelError(f"{self.name}: no layer named {name!r}") from None

    @property
    def parameters(self) -> list[IRLayer]:
        return [layer for layer in self.layers if layer.op == "Parameter"]

    @property
    def results(self) -> list[IRLayer]:
        return [layer for layer in self.layers if layer.op == "Result"]

    def consumers(self, name: str) -> list[IRLayer]:
        return [layer for layer in self.layers if name in layer.inputs]


# --- attribute parsing ------------------------------------------------------------------


def _ints(text: str) -> tuple[int, ...]:
    text = text.strip()
    if not text:
        return ()
    return tuple(int(v) for v in text.split(","))


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"not a boolean: {text!r}")
    return text.lower() == "true"


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} (supported: {', '.join(allowed)})")
        return text

    return parse


_AUTO_PAD = _choice("explicit", "valid", "same_upper", "same_lower", "notset")
_BROADCAST = _choice("numpy", "none")
_CONV_ATTRS: dict[str, Callable[[str], Attr]] = {
    "strides": _ints,
    "dilations": _ints,
    "pads_begin": _ints,
    "pads_end": _ints,
    "auto_pad": _AUTO_PAD,
}

# op -> (supported opset versions, number of inputs, attribute parsers, defaults)
_OPS: dict[str, tuple[tuple[str, ...], int, dict[str, Callable[[str], Attr]], dict[str, Attr]]] = {
    "Parameter": (
        ("opset1",),
        0,
        {"shape": _ints, "element_type": _choice("f32")},
        {},
    ),
    "Const": (
        ("opset1",),
        0,
        {"shape": _ints, "element_type": str, "offset": str, "size": str},
        {},
    ),
    "Convert": (("opset1",), 1, {"destination_type": str}, {}),
    "Convolution": (("opset1",), 2, _CONV_ATTRS, {"auto_pad": "explicit"}),
    "GroupConvolution": (("opset1",), 2, _CONV_ATTRS, {"auto_pad": "explicit"}),
    "Add": (("opset1",), 2, {"auto_broadcast": _BROADCAST}, {"auto_broadcast": "numpy"}),
    "Multiply": (("opset1",), 2, {"auto_broadcast": _BROADCAST}, {"auto_broadcast": "numpy"}),
    "PReLU": (("opset1",), 2, {}, {}),
    "Sigmoid": (("opset1",), 1, {}, {}),
    "AvgPool": (
        ("opset1",),
        1,
        {
            "kernel": _ints,
            "strides": _ints,
            "pads_begin": _ints,
            "pads_end": _ints,
            "exclude-pad": _bool,
            "auto_pad": _AUTO_PAD,
            "rounding_type": _choice("floor", "ceil"),
        },
        {"auto_pad": "explicit", "rounding_type": "floor", "exclude-pad": False},
    ),
    "Result": (("opset1",), 1, {}, {}),
}
SUPPORTED_OPS = tuple(sorted(_OPS))
_REQUIRED = {
    "Convolution": ("strides", "dilations", "pads_begin", "pads_end"),
    "GroupConvolution": ("strides", "dilations", "pads_begin", "pads_end"),
    "AvgPool": ("kernel", "strides", "pads_begin", "pads_end"),
    "Parameter": ("shape", "element_type"),
    "Const": ("shape", "element_type", "offset", "size"),
    "Convert": ("destination_type",),
}


def _parse_attrs(where: str, op: str, data: ET.Element | None) -> dict[str, Attr]:
    _versions, _n_in, parsers, defaults = _OPS[op]
    attrs: dict[str, Attr] = dict(defaults)
    raw = dict(data.attrib) if data is not None else {}
    for key, text in raw.items():
        if key not in parsers:
            raise ModelError(f"{where}: unsupported attribute {key!r} of {op}")
        try:
            attrs[key] = parsers[key](text)
        except ValueError as e:
            raise ModelError(f"{where}: bad attribute {key}={text!r} of {op}: {e}") from None
    missing = [k for k in _REQUIRED.get(op, ()) if k not in attrs]
    if missing:
        raise ModelError(f"{where}: {op} lacks attribute(s) {', '.join(missing)}")
    return attrs


# --- the graph --------------------------------------------------------------------------


@dataclass
class _Raw:
    id: int
    name: str
    op: str
    attrs: dict[str, Attr]
    in_ports: list[int]
    out_ports: dict[int, tuple[int, ...]]  # port id -> dims


def _port_dims(port: ET.Element) -> tuple[int, ...]:
    try:
        return tuple(int((d.text or "").strip()) for d in port.findall("dim"))
    except ValueError:
        return ()  # dynamic dims ("-1", "?") carry no static shape


def _const_value(where: str, attrs: Mapping[str, Attr], blob: bytes) -> np.ndarray:
    etype = str(attrs["element_type"])
    if etype not in ELEMENT_TYPES:
        raise ModelError(f"{where}: unsupported element type {etype!r}")
    shape = attrs["shape"]
    assert isinstance(shape, tuple)
    try:
        offset, size = int(str(attrs["offset"])), int(str(attrs["size"]))
    except ValueError:
        raise ModelError(f"{where}: bad offset/size of a constant") from None
    dtype = np.dtype(ELEMENT_TYPES[etype])
    if offset < 0 or size < 0 or any(d < 0 for d in shape):
        raise ModelError(f"{where}: negative offset, size or shape of a constant")
    if size != math.prod(shape) * dtype.itemsize:
        raise ModelError(f"{where}: constant of shape {list(shape)} {etype} cannot be {size} bytes")
    if offset + size > len(blob):
        raise ModelError(
            f"{where}: constant at bytes {offset}..{offset + size} lies beyond the end of the "
            f".bin ({len(blob)} bytes): truncated or mismatched weights file"
        )
    value = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=offset)
    return value.reshape(shape).astype(dtype.newbyteorder("="))  # a private, writable copy


def _convert(where: str, value: np.ndarray, destination: str) -> np.ndarray:
    if destination not in ELEMENT_TYPES:
        raise ModelError(f"{where}: unsupported Convert destination type {destination!r}")
    target = np.dtype(ELEMENT_TYPES[destination]).newbyteorder("=")
    if np.issubdtype(target, np.integer) and np.issubdtype(value.dtype, np.floating):
        value = np.trunc(value)  # OpenVINO's float -> int Convert truncates
    return value.astype(target)


def read_ir(xml_path: str | Path, bin_path: str | Path | None = None) -> IRGraph:
    """Parse an OpenVINO IR v11 model (`xml_path` and, by default, the .bin beside it).

    Raises ModelError for unreadable or malformed files, another IR version, operations or
    attributes this reader does not support, and constants that do not fit the .bin.
    """
    xml_path = Path(xml_path)
    bin_path = Path(bin_path) if bin_path is not None else xml_path.with_suffix(".bin")
    try:
        root = ET.parse(xml_path).getroot()
    except OSError as e:
        raise ModelError(f"cannot read OpenVINO IR {xml_path}: {e.strerror}") from None
    except ET.ParseError as e:
        raise ModelError(f"{xml_path.name}: not a well-formed IR XML file ({e})") from None
    try:
        blob = bin_path.read_bytes()
    except OSError as e:
        raise ModelError(f"cannot read IR weights {bin_path}: {e.strerror}") from None
    src = xml_path.name
    if root.tag != "net":
        raise ModelError(f"{src}: not an OpenVINO IR (root element <{root.tag}>)")
    if root.get("version") != str(IR_VERSION):
        raise ModelError(
            f"{src}: unsupported IR version {root.get('version')!r} (expected {IR_VERSION})"
        )

    raws: dict[int, _Raw] = {}
    for el in root.findall("./layers/layer"):
        try:
            lid = int(el.get("id", ""))
        except ValueError:
            raise ModelError(f"{src}: layer without a numeric id") from None
        name, op, version = el.get("name", str(lid)), el.get("type", ""), el.get("version", "")
        where = f"{src}: layer {lid} {name!r}"
        if op not in _OPS:
            raise ModelError(
                f"{where}: unsupported operation {op!r} (supported: {', '.join(SUPPORTED_OPS)})"
            )
        if version not in _OPS[op][0]:
            raise ModelError(f"{where}: unsupported version {version!r} of {op}")
        if lid in raws:
            raise ModelError(f"{where}: duplicate layer id {lid}")
        attrs = _parse_attrs(where, op, el.find("data"))
        try:
            in_ports = sorted(int(p.get("id", "")) for p in el.findall("./input/port"))
            out_ports = {int(p.get("id", "")): _port_dims(p) for p in el.findall("./output/port")}
        except ValueError:
            raise ModelError(f"{where}: port without a numeric id") from None
        if len(in_ports) != _OPS[op][1]:
            raise ModelError(f"{where}: {op} with {len(in_ports)} inputs")
        if len(out_ports) != (0 if op == "Result" else 1):
            raise ModelError(f"{where}: {op} with {len(out_ports)} outputs")
        raws[lid] = _Raw(lid, name, op, attrs, in_ports, out_ports)
    if not raws:
        raise ModelError(f"{src}: the IR has no layers")
    names = [r.name for r in raws.values()]
    if len(set(names)) != len(names):
        raise ModelError(f"{src}: layer names are not unique")

    # Edges: (to-layer, to-port) -> from-layer.
    feeds: dict[tuple[int, int], int] = {}
    for edge in root.findall("./edges/edge"):
        try:
            fl, fp = int(edge.get("from-layer", "")), int(edge.get("from-port", ""))
            tl, tp = int(edge.get("to-layer", "")), int(edge.get("to-port", ""))
        except ValueError:
            raise ModelError(f"{src}: edge with a missing or non-numeric end") from None
        if fl not in raws or tl not in raws:
            raise ModelError(f"{src}: edge {fl}->{tl} names a layer that does not exist")
        if fp not in raws[fl].out_ports or tp not in raws[tl].in_ports:
            raise ModelError(f"{src}: edge {fl}:{fp}->{tl}:{tp} names a port that does not exist")
        if (tl, tp) in feeds:
            raise ModelError(f"{src}: input port {tl}:{tp} has more than one edge")
        feeds[(tl, tp)] = fl
    inputs: dict[int, list[int]] = {}
    for r in raws.values():
        missing = [p for p in r.in_ports if (r.id, p) not in feeds]
        if missing:
            raise ModelError(
                f"{src}: layer {r.id} {r.name!r} has unconnected input port {missing[0]}"
            )
        inputs[r.id] = [feeds[(r.id, p)] for p in r.in_ports]

    # Topological order (Kahn's algorithm, ties broken by layer id for a stable order).
    pending = {lid: len(set(feeding)) for lid, feeding in inputs.items()}
    users: dict[int, set[int]] = {lid: set() for lid in raws}
    for lid, feeding in inputs.items():
        for i in feeding:
            users[i].add(lid)
    ready = sorted(lid for lid, n in pending.items() if n == 0)
    order: list[int] = []
    while ready:
        lid = ready.pop(0)
        order.append(lid)
        for u in sorted(users[lid]):
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
        ready.sort()
    if len(order) != len(raws):
        raise ModelError(f"{src}: the graph has a cycle")

    # Build layers, reading constants and folding Convert of constants.
    layers: list[IRLayer] = []
    built: dict[int, IRLayer] = {}
    for lid in order:
        r = raws[lid]
        where = f"{src}: layer {lid} {r.name!r}"
        shape = next(iter(r.out_ports.values()), ())
        ins = [built[i] for i in inputs[lid]]
        if r.op == "Const":
            value = _const_value(where, r.attrs, blob)
            stored = str(r.attrs["element_type"])
            layer = IRLayer(r.name, "Const", r.attrs, (), value.shape, value, stored)
        elif r.op == "Convert":
            if ins[0].op != "Const" or ins[0].value is None:
                raise ModelError(f"{where}: Convert of a non-constant input is not supported")
            value = _convert(where, ins[0].value, str(r.attrs["destination_type"]))
            layer = IRLayer(r.name, "Const", {}, (), value.shape, value, ins[0].stored_type)
        else:
            layer = IRLayer(r.name, r.op, r.attrs, tuple(i.name for i in ins), shape)
            _check(where, layer, ins)
        built[lid] = layer
        layers.append(layer)

    # Drop constants nobody reads any more (the f16 halves of folded Convert chains).
    used = {i for layer in layers for i in layer.inputs}
    layers = [la for la in layers if la.op != "Const" or la.name in used]
    graph = IRGraph(root.get("name", xml_path.stem), layers)
    if len(graph.parameters) != 1 or len(graph.results) != 1:
        raise ModelError(f"{src}: expected one input and one output")
    return graph


def _check(where: str, layer: IRLayer, ins: list[IRLayer]) -> None:
    """Structural checks a translator relies on."""
    op = layer.op
    if op in ("Convolution", "GroupConvolution"):
        w = ins[1]
        if w.op != "Const" or w.value is None:
            raise ModelError(f"{where}: {op} weights must be a constant")
        rank = 4 if op == "Convolution" else 5
        if w.value.ndim != rank:
            raise ModelError(f"{where}: {op} weights of rank {w.value.ndim} (2-D only)")
        for key in ("strides", "dilations", "pads_begin", "pads_end"):
            v = layer.attrs[key]
            if not isinstance(v, tuple) or len(v) != 2:
                raise ModelError(f"{where}: {op} {key} must have 2 values")
    elif op == "AvgPool":
        for key in ("kernel", "strides", "pads_begin", "pads_end"):
            v = layer.attrs[key]
            if not isinstance(v, tuple) or len(v) != 2:
                raise ModelError(f"{where}: AvgPool {key} must have 2 values")
    elif op == "PReLU":
        if ins[1].op != "Const" or ins[1].value is None:
            raise ModelError(f"{where}: PReLU slope must be a constant")
    elif op in ("Add", "Multiply"):
        for i in ins:
            if i.op == "Const" and i.value is not None and i.value.dtype.kind != "f":
                raise ModelError(f"{where}: {op} of a non-float constant is not supported")


def prelu_slope_shape(slope_shape: tuple[int, ...], channels: int) -> tuple[int, ...]:
    """The shape that makes a slope of `slope_shape` broadcast against an N x C x H x W input
    the way OpenVINO's PReLU does: a 1-D slope of C values runs along the channel axis, anything
    else broadcasts numpy-style (e.g. a single value everywhere)."""
    if len(slope_shape) == 1 and slope_shape[0] == channels and channels > 1:
        return (channels, 1, 1)
    return tuple(slope_shape)


def conv_weight(layer: IRLayer, weight: np.ndarray) -> tuple[np.ndarray, int]:
    """(O x I/G x kh x kw weights, groups) of a (Group)Convolution: OpenVINO's GroupConvolution
    weights are G x O/G x I/G x kh x kw."""
    if layer.op == "GroupConvolution":
        g, og, ig, kh, kw = weight.shape
        return weight.reshape(g * og, ig, kh, kw), g
    return weight, 1


def same_pads(
    size: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...], upper: bool
) -> tuple[list[int], list[int]]:
    """Begin/end pads of auto_pad same_upper/same_lower (output = ceil(size / stride))."""
    begin, end = [], []
    for n, k, s in zip(size, kernel, strides, strict=True):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if upper else big)
        end.append(big if upper else small)
    return begin, end


def attr_ints(layer: IRLayer, key: str) -> tuple[int, ...]:
    v = layer.attrs[key]
    if not isinstance(v, tuple):
        raise ModelError(f"layer {layer.name!r}: attribute {key} is not a list of integers")
    return v


def describe(graph: IRGraph) -> dict[str, Any]:
    """Counts of each operation and the number of weights (for logs and model cards)."""
    ops: dict[str, int] = {}
    for layer in graph.layers:
        ops[layer.op] = ops.get(layer.op, 0) + 1
    n = sum(layer.value.size for layer in graph.layers if layer.value is not None)
    return {"ops": ops, "weights": int(n)}
