"""Export MTCNN (PNet/RNet/ONet) to ONNX for `maskid.detection.mtcnn`.

The weights are facenet-pytorch's (MIT, Copyright (c) 2019 Timothy Esler), plain state dicts
`facenet_pytorch/data/{pnet,rnet,onet}.pt`. `import facenet_pytorch` fails beside the CPU torch
(torchvision), so the three tiny modules are re-implemented here and only the .pt files are read.

Graph contract (also written to each model's metadata_props):
- input "image": float32 N x 3 x H x W, RGB, values 0..255 (normalisation (x-127.5)/128 is baked in)
- pnet: dynamic N, H, W (H, W >= 12); outputs "reg" N x 4 x h x w, "prob" N x h x w (face prob.)
- rnet: N x 3 x 24 x 24 -> "reg" N x 4, "prob" N
- onet: N x 3 x 48 x 48 -> "reg" N x 4, "landmarks" N x 10 (x1..x5, y1..y5 relative), "prob" N

Usage:
    PYTHONPATH=training python -m maskid_train.export_mtcnn [--weights DIR_OR_WHEEL] [--out python/maskid/data/detector]
"""

from __future__ import annotations

import argparse
import io
import site
import sys
import zipfile
from pathlib import Path

import onnx
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "python" / "maskid" / "data" / "detector"
WHEEL_GLOBS = ["facenet_pytorch-*.whl"]
WHEEL_DIRS = [Path("/work/wheels"), REPO / "wheels", Path.cwd()]


MIT_NOTICE = """MIT License

Copyright (c) 2019 Timothy Esler

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 127.5) * 0.0078125


class PNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)
        self.norm = _Normalize()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(x)
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        prob = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return self.conv4_2(x), prob


class RNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)
        self.norm = _Normalize()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(x)
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], 576)
        x = self.prelu4(self.dense4(x))
        prob = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
        return self.dense5_2(x), prob


class ONet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)
        self.norm = _Normalize()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.norm(x)
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], 1152)
        x = self.prelu5(self.dense5(x))
        prob = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
        return self.dense6_2(x), self.dense6_3(x), prob


def _find_weights(arg: str | None) -> dict[str, bytes]:
    """Return {"pnet": bytes, ...} from a directory, a wheel, or an installed facenet_pytorch."""
    names = ("pnet", "rnet", "onet")
    candidates: list[Path] = []
    if arg:
        candidates.append(Path(arg))
    for sp in [*site.getsitepackages(), site.getusersitepackages()]:
        candidates.append(Path(sp) / "facenet_pytorch" / "data")
    for d in WHEEL_DIRS:
        if d.is_dir():
            for g in WHEEL_GLOBS:
                candidates.extend(sorted(d.glob(g)))
    for c in candidates:
        if c.is_dir() and all((c / f"{n}.pt").is_file() for n in names):
            return {n: (c / f"{n}.pt").read_bytes() for n in names}
        if c.is_file() and c.suffix == ".whl":
            with zipfile.ZipFile(c) as z:
                found = {n: f"facenet_pytorch/data/{n}.pt" for n in names}
                if all(p in z.namelist() for p in found.values()):
                    return {n: z.read(p) for n, p in found.items()}
    sys.exit(f"MTCNN weights not found (looked in: {', '.join(map(str, candidates))})")


def _license_text(arg: str | None) -> str | None:
    for d in [Path(arg)] if arg else []:
        if d.is_file() and d.suffix == ".whl":
            with zipfile.ZipFile(d) as z:
                for n in z.namelist():
                    if n.endswith("LICENSE.md"):
                        return z.read(n).decode()
    return None


def _export(model: nn.Module, path: Path, shape: tuple[int, ...], outputs: list[str]) -> None:
    dynamic: dict[str, dict[int, str]] = {"image": {0: "N"}}
    if shape[2] == 0:  # pnet: dynamic H/W
        dynamic["image"].update({2: "H", 3: "W"})
        shape = (1, 3, 64, 80)
        for o in outputs:
            dynamic[o] = {0: "N", 1: "h", 2: "w"} if o == "prob" else {0: "N", 2: "h", 3: "w"}
    else:
        for o in outputs:
            dynamic[o] = {0: "N"}
    x = torch.rand(shape) * 255
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["image"],
        output_names=outputs,
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )
    m = onnx.load(str(path))
    meta = {
        "producer": "maskid training/maskid_train/export_mtcnn.py",
        "weights": "facenet-pytorch 2.6.0 MTCNN (MIT, (c) 2019 Timothy Esler)",
        "input": "float32 NCHW RGB 0..255; (x-127.5)/128 is inside the graph",
    }
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", help="facenet_pytorch wheel, or a folder with {p,r,o}net.pt")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    blobs = _find_weights(args.weights)
    args.out.mkdir(parents=True, exist_ok=True)
    specs: list[tuple[str, nn.Module, tuple[int, ...], list[str]]] = [
        ("pnet", PNet(), (1, 3, 0, 0), ["reg", "prob"]),
        ("rnet", RNet(), (2, 3, 24, 24), ["reg", "prob"]),
        ("onet", ONet(), (2, 3, 48, 48), ["reg", "landmarks", "prob"]),
    ]
    for name, model, shape, outputs in specs:
        sd = torch.load(io.BytesIO(blobs[name]), map_location="cpu", weights_only=True)
        model.load_state_dict(sd)
        model.eval()
        path = args.out / f"{name}.onnx"
        with torch.no_grad():
            _export(model, path, shape, outputs)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    lic = _license_text(args.weights) or MIT_NOTICE
    (args.out / "LICENSE-MTCNN.md").write_text(
        "MTCNN weights (pnet/rnet/onet.onnx) converted from facenet-pytorch 2.6.0\n"
        "(https://github.com/timesler/facenet-pytorch), under this licence:\n\n" + lic
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
