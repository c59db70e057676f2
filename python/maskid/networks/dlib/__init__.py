"""dlib's 128-d face ResNet, read from dlib's own serialization and rebuilt as ONNX / PyTorch.

`reader` parses the .dat; `onnx_build` makes the runtime model. The PyTorch module (imports
torch) is for training and export only, so it lives in training/maskid_train/dlib_torch.py.
"""

from maskid.networks.dlib.onnx_build import build_onnx
from maskid.networks.dlib.reader import DlibNet, read_dlib_net

__all__ = ["DlibNet", "build_onnx", "read_dlib_net"]
