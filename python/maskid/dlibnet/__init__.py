"""dlib's 128-d face ResNet, read from dlib's own serialization and rebuilt as ONNX / PyTorch.

`reader` parses the .dat; `onnx_build` makes the runtime model; `torch_net` (imports torch)
is for training and export only.
"""

from maskid.dlibnet.onnx_build import build_onnx
from maskid.dlibnet.reader import DlibNet, read_dlib_net

__all__ = ["DlibNet", "build_onnx", "read_dlib_net"]
