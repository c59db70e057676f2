"""An OpenVINO IR network (OMZ face-reidentification-retail-0095) as a trainable PyTorch module.

`IRNet(graph)` interprets the layers of `maskid.networks.openvino_ir.read_ir`'s graph in their topological
order; every constant an operation reads (conv weights, biases, PReLU slopes, the input
scale/shift the IR folds in front of the first conv, the squeeze-excitation convs) becomes an
`nn.Parameter` in the IR's own shape, so the network can be fine-tuned and `to_graph()` hands
the tuned weights back to `maskid.networks.openvino_ir.build_onnx`. Not used at runtime.

Input: N x 3 x 128 x 128 float32, **BGR** planes of pixel values 0..255 (the chip aligned to
OMZ's five-point template); output: N x 256 (the IR's 1 x 256 x 1 x 1, flattened; not
L2-normalised).

Last spatial feature map (OMZ face-reid-0095): layer "655", the PReLU after the final 1x1
expansion conv (128 -> 512 channels), N x 512 x 8 x 8 (one cell per 16 x 16 chip pixels). The
head after it is the global depthwise conv (GroupConvolution "Multiply_8511", 512 groups, 8 x 8
kernel) + bias ("657") and the 1x1 conv 512 -> 256 ("658"):

    net = IRNet.from_ir()                        # or IRNet(read_ir(xml))
    f = net.features(x)                          # N x 512 x 8 x 8 ("655")
    d = net.head(f)                              # N x 256, equals net(x)
    d, maps = net(x, return_features=["652"])    # any layer by IR name, e.g. "652": the last
                                                 # bottleneck's output, N x 128 x 8 x 8
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maskid.errors import ModelError
from maskid.networks.openvino_ir.reader import (
    IRGraph,
    IRLayer,
    attr_ints,
    prelu_slope_shape,
    read_ir,
    same_pads,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_IR = (
    REPO.parent
    / "shared"
    / "models"
    / "omz-face-reid-0095"
    / "FP16"
    / "face-reidentification-retail-0095.xml"
)


def _key(name: str, taken: set[str]) -> str:
    base = "w_" + re.sub(r"[^0-9A-Za-z_]", "_", name)
    key, k = base, 1
    while key in taken:
        k += 1
        key = f"{base}_{k}"
    taken.add(key)
    return key


def _pads(layer: IRLayer, x: torch.Tensor, kernel: Sequence[int]) -> tuple[list[int], list[int]]:
    """Begin/end pads (rows, cols) of a conv or pool for input x."""
    auto = layer.attrs.get("auto_pad", "explicit")
    if auto in ("explicit", "notset"):
        return list(attr_ints(layer, "pads_begin")), list(attr_ints(layer, "pads_end"))
    if auto == "valid":
        return [0, 0], [0, 0]
    size = (int(x.shape[2]), int(x.shape[3]))
    return same_pads(size, tuple(kernel), attr_ints(layer, "strides"), auto == "same_upper")


def _effective_kernel(kernel: Sequence[int], dilations: Sequence[int]) -> tuple[int, ...]:
    return tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True))


class IRNet(nn.Module):
    """Interpreter of an `IRGraph`: input N x C x H x W -> output N x D (see module doc)."""

    def __init__(self, graph: IRGraph, feature_layer: str | None = None) -> None:
        super().__init__()
        self.graph = graph
        self.weights = nn.ParameterDict()
        self._param: dict[str, str] = {}  # IR const name -> ParameterDict key
        taken: set[str] = set()
        self._steps: list[IRLayer] = []
        for layer in graph.layers:
            if layer.op == "Const":
                assert layer.value is not None
                if layer.value.dtype.kind != "f":
                    raise ModelError(f"layer {layer.name!r}: non-float constant in the network")
                key = _key(layer.name, taken)
                self.weights[key] = nn.Parameter(torch.from_numpy(layer.value.astype("float32")))
                self._param[layer.name] = key
            elif layer.op == "AvgPool":
                b, e = attr_ints(layer, "pads_begin"), attr_ints(layer, "pads_end")
                if b != e and layer.attrs["auto_pad"] in ("explicit", "notset"):
                    raise ModelError(f"layer {layer.name!r}: asymmetric AvgPool padding")
                self._steps.append(layer)
            else:
                self._steps.append(layer)
        (self._input,) = (la.name for la in graph.parameters)
        (result,) = graph.results
        self._output = result.inputs[0]
        self.feature_layer = feature_layer or self._last_spatial()
        self._split = self._cut(self.feature_layer)

    @classmethod
    def from_ir(cls, xml_path: str | Path = DEFAULT_IR, feature_layer: str | None = None) -> IRNet:
        return cls(read_ir(xml_path), feature_layer)

    # --- structure ------------------------------------------------------------------------
    def _last_spatial(self) -> str:
        """The last layer (topological order) whose output still has H x W > 1."""
        for layer in reversed(self._steps):
            if len(layer.shape) == 4 and layer.shape[2] * layer.shape[3] > 1:
                return layer.name
        raise ModelError(f"{self.graph.name}: no spatial feature map")

    def _cut(self, name: str) -> int:
        """Index into the steps after which `name` alone carries everything the head needs."""
        names = [s.name for s in self._steps]
        if name not in names:
            raise ModelError(f"{self.graph.name}: no computed layer named {name!r}")
        at = names.index(name)
        later = set(names[at + 1 :])
        for step in self._steps[at + 1 :]:
            for i in step.inputs:
                if i != name and i not in later and i not in self._param:
                    raise ModelError(
                        f"{self.graph.name}: layer {name!r} is not a cut point "
                        f"({step.name!r} also reads {i!r})"
                    )
        return at + 1

    def param(self, const_name: str) -> nn.Parameter:
        """The parameter holding IR constant `const_name` (in the IR's shape)."""
        if const_name not in self._param:
            raise ModelError(f"{self.graph.name}: no constant named {const_name!r}")
        return self.weights[self._param[const_name]]

    # --- the operations -------------------------------------------------------------------
    def _value(self, env: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        key = self._param.get(name)
        return self.weights[key] if key is not None else env[name]

    def _op(self, layer: IRLayer, env: dict[str, torch.Tensor]) -> torch.Tensor:
        op = layer.op
        x = self._value(env, layer.inputs[0])
        if op in ("Convolution", "GroupConvolution"):
            w: torch.Tensor = self.param(layer.inputs[1])
            groups = 1
            if op == "GroupConvolution":
                groups = int(w.shape[0])
                w = w.reshape(w.shape[0] * w.shape[1], *w.shape[2:])
            dil = attr_ints(layer, "dilations")
            begin, end = _pads(layer, x, _effective_kernel(w.shape[2:], dil))
            padding: tuple[int, ...] = tuple(begin)
            if begin != end:
                x = F.pad(x, (begin[1], end[1], begin[0], end[0]))
                padding = (0, 0)
            return F.conv2d(
                x,
                w,
                None,
                attr_ints(layer, "strides"),
                padding,
                dil,
                groups,
            )
        if op == "Add":
            return x + self._value(env, layer.inputs[1])
        if op == "Multiply":
            return x * self._value(env, layer.inputs[1])
        if op == "PReLU":
            slope: torch.Tensor = self.param(layer.inputs[1])
            channels = int(x.shape[1]) if x.dim() > 1 else 1
            slope = slope.reshape(prelu_slope_shape(tuple(slope.shape), channels))
            return torch.where(x >= 0, x, x * slope)
        if op == "Sigmoid":
            return torch.sigmoid(x)
        if op == "AvgPool":
            kernel = attr_ints(layer, "kernel")
            begin, end = _pads(layer, x, kernel)
            if begin != end:
                raise ModelError(f"layer {layer.name!r}: asymmetric AvgPool padding")
            return F.avg_pool2d(
                x,
                kernel,
                attr_ints(layer, "strides"),
                tuple(begin),
                ceil_mode=layer.attrs["rounding_type"] == "ceil",
                count_include_pad=not layer.attrs["exclude-pad"],
            )
        if op in ("Parameter", "Result"):
            return x
        raise ModelError(f"layer {layer.name!r}: no PyTorch translation for {op}")

    def _run(self, steps: Sequence[IRLayer], env: dict[str, torch.Tensor]) -> None:
        for step in steps:
            if step.op == "Parameter":
                continue
            if step.op != "Result":
                env[step.name] = self._op(step, env)

    # --- public API -----------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, return_features: Sequence[str] | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """N x C x H x W -> N x D; with `return_features` (IR layer names), also a dict of
        those layers' outputs."""
        env = {self._input: x}
        self._run(self._steps, env)
        out = env[self._output].flatten(1)
        if return_features is None:
            return out
        missing = [n for n in return_features if n not in env]
        if missing:
            raise ModelError(f"{self.graph.name}: no computed layer named {missing[0]!r}")
        return out, {n: env[n] for n in return_features}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last spatial feature map (`feature_layer`; for OMZ 0095 N x 512 x 8 x 8)."""
        env = {self._input: x}
        self._run(self._steps[: self._split], env)
        return env[self.feature_layer]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The rest of the network from `features(x)`: N x D."""
        env = {self.feature_layer: features}
        self._run(self._steps[self._split :], env)
        return env[self._output].flatten(1)

    def to_graph(self) -> IRGraph:
        """The reader's graph with this module's (possibly fine-tuned) weights, for
        `maskid.networks.openvino_ir.build_onnx`."""
        layers = []
        for layer in self.graph.layers:
            if layer.name in self._param:
                value = self.param(layer.name).detach().cpu().numpy().astype("float32")
                layer = replace(layer, value=value)
            layers.append(layer)
        return IRGraph(self.graph.name, layers)

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.parameters())
