"""OpenVINO IR v11 networks (e.g. OMZ face-reidentification-retail-0095) read from their XML
graph and .bin weights and rebuilt as ONNX / PyTorch.

`reader` parses the IR; `onnx_build` makes the runtime model; the PyTorch module for
fine-tuning lives in training/maskid_train/irnet_torch.py (imports torch).
"""

from maskid.networks.openvino_ir.onnx_build import build_onnx
from maskid.networks.openvino_ir.reader import IRGraph, IRLayer, read_ir

__all__ = ["IRGraph", "IRLayer", "build_onnx", "read_ir"]
