"""Build an ONNX graph from parsed dlib layer records (onnx.helper only; no torch).

Input "input": N x 3 x H x W float32 RGB pixel values 0..255; the (x - mean) / 256 of dlib's
input layer happens inside the graph. Output "descriptor": N x dim (not L2-normalised).
Preprocessing constants travel in metadata_props so a runtime never guesses them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from maskid.errors import ModelError
from maskid.networks.dlib.reader import AddPrev, Affine, Conv, DlibNet, Fc, Pool, Relu, Skip, Tag

OPSET = 17
CHIP_PADDING = 0.25  # dlib's get_face_chip(img, shape, 150, 0.25) for this network
INPUT_SCALE = 1.0 / 256.0  # dlib's input_rgb_image_sized divides by 256, not 255


class _Graph:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), n))
        return n

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


Shape = tuple[int, int, int]  # C, H, W


def _out_size(n: int, k: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - k) // stride + 1  # rounds down, like dlib


def _pad_to(g: _Graph, x: str, shape: Shape, target: Shape) -> str:
    """Zero-pad at the end (higher channels, bottom, right): dlib's add with unequal sizes."""
    if shape == target:
        return x
    extra = [0, 0, 0, 0, 0, *(t - s for t, s in zip(target, shape, strict=True))]
    pads = g.const("pads", np.array(extra, dtype=np.int64))
    return g.op("Pad", [x, pads], mode="constant")


def _pool(g: _Graph, x: str, p: Pool, shape: Shape) -> tuple[str, Shape]:
    c, h, w = shape
    if p.size == (0, 0):  # pool over the whole map
        op = "GlobalAveragePool" if p.kind == "avg" else "GlobalMaxPool"
        return g.op(op, [x]), (c, 1, 1)
    if p.pad != (0, 0) and p.kind == "avg":
        # dlib's CPU/cuDNN averaging over padded windows is not reproduced here.
        raise ModelError("avg_pool with padding is not supported")
    # ONNX MaxPool ignores padded entries, as dlib does.
    pads = [p.pad[0], p.pad[1], p.pad[0], p.pad[1]]
    op = "AveragePool" if p.kind == "avg" else "MaxPool"
    y = g.op(op, [x], kernel_shape=list(p.size), strides=list(p.stride), pads=pads)
    oh = _out_size(h, p.size[0], p.stride[0], p.pad[0])
    ow = _out_size(w, p.size[1], p.stride[1], p.pad[1])
    return y, (c, oh, ow)


def _branch(g: _Graph, net: DlibNet, x: str) -> str:
    """Append `net` (bottom-up records with tag/skip/add structure) reading RGB 0..255 from x."""
    rows, cols = net.input_size
    means = np.array(net.input_means, dtype=np.float32).reshape(1, 3, 1, 1)
    x = g.op("Sub", [x, g.const("mean", means)])
    x = g.op("Mul", [x, g.const("scale", np.array(INPUT_SCALE, dtype=np.float32))])
    shape: Shape = (3, rows, cols)
    tags: dict[int, tuple[str, Shape]] = {}
    for layer in net.layers:
        if isinstance(layer, Conv):
            o, _i, kh, kw = layer.weight.shape
            (sy, sx), (py, px) = layer.stride, layer.pad
            w, b = g.const("W", layer.weight), g.const("B", layer.bias)
            x = g.op(
                "Conv", [x, w, b], kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px]
            )
            shape = (o, _out_size(shape[1], kh, sy, py), _out_size(shape[2], kw, sx, px))
        elif isinstance(layer, Affine):
            k = layer.gamma.size
            x = g.op("Mul", [x, g.const("gamma", layer.gamma.reshape(1, k, 1, 1))])
            x = g.op("Add", [x, g.const("beta", layer.beta.reshape(1, k, 1, 1))])
        elif isinstance(layer, Relu):
            x = g.op("Relu", [x])
        elif isinstance(layer, Pool):
            x, shape = _pool(g, x, layer, shape)
        elif isinstance(layer, Tag):
            tags[layer.id] = (x, shape)
        elif isinstance(layer, Skip):
            x, shape = tags[layer.id]
        elif isinstance(layer, AddPrev):
            other, oshape = tags[layer.id]
            target: Shape = tuple(max(a, b) for a, b in zip(shape, oshape, strict=True))  # type: ignore[assignment]
            x = g.op("Add", [_pad_to(g, x, shape, target), _pad_to(g, other, oshape, target)])
            shape = target
        elif isinstance(layer, Fc):
            x = g.op("Flatten", [x], axis=1)
            x = g.op("MatMul", [x, g.const("fc", layer.weight.T)])
            if layer.bias is not None:
                x = g.op("Add", [x, g.const("fc_bias", layer.bias)])
            shape = (layer.weight.shape[0], 1, 1)
        else:  # pragma: no cover - the reader only yields the types above
            raise ModelError(f"unsupported layer {type(layer).__name__}")
    return x


def build_onnx(net: DlibNet, model_name: str, version: str) -> onnx.ModelProto:
    """Translate `net` into an ONNX model: "input" N x 3 x H x W -> "descriptor" N x dim."""
    g = _Graph()
    x = _branch(g, net, "input")
    g.nodes.append(helper.make_node("Identity", [x], ["descriptor"], name="descriptor"))
    return _finish(g, net, model_name, version, net.output_dim, {})


def _finish(
    g: _Graph, net: DlibNet, model_name: str, version: str, dim: int, extra: dict[str, str]
) -> onnx.ModelProto:
    rows, cols = net.input_size
    graph = helper.make_graph(
        g.nodes,
        model_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, rows, cols])],
        [helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["N", dim])],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="maskid"
    )
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    helper.set_model_props(
        model,
        {
            "model_name": model_name,
            "version": version,
            "input_size": json.dumps([rows, cols]),
            "color_order": "RGB",
            "mean": json.dumps([round(float(m), 6) for m in net.input_means]),
            "scale": json.dumps(INPUT_SCALE),
            "chip_padding": json.dumps(CHIP_PADDING),
            "descriptor_dim": str(dim),
            "normalized": "false",
            "source": "dlib_face_recognition_resnet_model_v1.dat",
            **extra,
        },
    )
    onnx.checker.check_model(model)
    return model


def _l2_normalize(g: _Graph, x: str) -> str:
    norm = g.op("ReduceL2", [x], axes=[1], keepdims=1)
    eps = g.const("eps", np.array(1e-12, dtype=np.float32))
    return g.op("Div", [x, g.op("Max", [norm, eps])])


def build_fused_onnx(
    full: DlibNet,
    eye: DlibNet,
    model_name: str,
    version: str,
    eye_rows: int,
    eye_weight: float,
    flip: bool = False,
) -> onnx.ModelProto:
    """The eye-region-weighted embedder: [l2(full(chip)), eye_weight * l2(eye(upper chip))].

    The periocular view is the chip's top `eye_rows` rows (eyes and brows, above a mask's top
    edge) stretched back to the chip size, bilinear with half-pixel centres (as
    torch.nn.functional.interpolate(align_corners=False) and cv2.resize). Cosine similarity of
    two such descriptors is a weighted mean of the full-face and periocular cosines, so the
    gallery needs nothing new.

    flip: horizontal-flip averaging inside the graph: each branch's descriptor becomes
    l2(mean(l2(branch(chip)), l2(branch(mirrored chip)))), the chip and its mirror run as one
    batch of 2N (twice the compute), so every caller gets it at enrollment and at query alike.
    """
    rows, cols = full.input_size
    if eye.input_size != full.input_size or not 0 < eye_rows <= rows:
        raise ModelError("the periocular branch must take the same chip size")
    g = _Graph()

    def i64(name: str, *v: int) -> str:
        return g.const(name, np.array(v, np.int64))

    x = "input"
    if flip:  # [chip; mirrored chip] as one batch of 2N (W reversed: Slice with step -1)
        end = int(np.iinfo(np.int64).min)
        mirror = g.op("Slice", [x, i64("fs", -1), i64("fe", end), i64("fa", 3), i64("fst", -1)])
        x = g.op("Concat", [x, mirror], axis=0)

    def pooled(d: str) -> str:
        """l2 per row; with flip, rows i and N+i averaged and l2-normalised again."""
        d = _l2_normalize(g, d)
        if not flip:
            return d
        pair = g.op("Reshape", [d, i64("two", 2, -1, full.output_dim)])
        return _l2_normalize(g, g.op("ReduceMean", [pair], axes=[0], keepdims=0))

    a = pooled(_branch(g, full, x))
    crop = g.op("Slice", [x, i64("starts", 0), i64("ends", eye_rows), i64("axes", 2)])
    # Resize takes absolute sizes, batch included: read the batch size off the input's shape.
    batch = g.op("Slice", [g.op("Shape", [x]), i64("s0", 0), i64("s1", 1)])
    sizes = g.op("Concat", [batch, i64("chw", 3, rows, cols)], axis=0)
    up = g.op(
        "Resize", [crop, "", "", sizes], mode="linear", coordinate_transformation_mode="half_pixel"
    )
    b = pooled(_branch(g, eye, up))
    b = g.op("Mul", [b, g.const("eye_weight", np.array(eye_weight, dtype=np.float32))])
    x = g.op("Concat", [a, b], axis=1)
    g.nodes.append(helper.make_node("Identity", [x], ["descriptor"], name="descriptor"))
    extra = {
        "eye_rows": str(eye_rows),
        "eye_weight": json.dumps(eye_weight),
        "normalized": "true",
        "architecture": "dlib ResNet full face + dlib ResNet periocular, concatenated",
    }
    if flip:  # only then: the plain model's file (and so its gallery id) stays byte-identical
        extra["flip_average"] = "true"
    return _finish(g, full, model_name, version, 2 * full.output_dim, extra)
