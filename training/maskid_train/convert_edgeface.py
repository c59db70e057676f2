"""Convert Idiap's EdgeFace XS / XXS checkpoints to maskid ONNX embedders.

Reads `edgeface_xs_q.pt` / `edgeface_xxs_q.pt` (shared/models/edgeface: PyTorch state dicts with
dynamic-int8 Linear layers, BSD-3-Clause), rebuilds the network with maskid's own module
(`maskid_train.edgenext`), dequantizes the int8 Linear weights to float and exports:

- input "input": float32 N x 3 x 112 x 112, RGB, already normalised, (pixel - 127.5) / 127.5
  (the pipeline does this from the model contract in the metadata; nothing is baked in)
- output "descriptor": float32 N x 512 (not L2-normalised; the metric is cosine)
- opset 17, dynamic batch; metadata_props: maskid.networks.contract.ModelContract (similarity warp onto
  the ArcFace 112 x 112 template, all five points weighted) plus version, source,
  source_sha256 and licence.

Compact storage (the default): every Linear weight is stored as the checkpoint's own int8 tensor
followed by Cast and Mul by its per-tensor scale, which reproduces the dequantized float weights
bit for bit (ONNX Runtime folds it at load); `--fp32` stores plain float32 instead. Either way the file is checked
against the torch module (max |diff| <= 1e-4) before it replaces the previous one (temp file +
rename).

Usage:
    PYTHONPATH=training python -m maskid_train.convert_edgeface [--src ../shared/models/edgeface] [--out DIR]
        [--variant edgeface-xs --variant edgeface-xxs] [--fp32]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]

from maskid.errors import ModelError  # noqa: E402
from maskid.networks.contract import ALL_POINTS, ModelContract  # noqa: E402
from maskid_train.edgenext import (  # noqa: E402
    _PACKED,
    EdgeFace,
    edgeface_from_state_dict,
    read_checkpoint,
)

DEFAULT_SRC = REPO.parent / "shared" / "models" / "edgeface"
DEFAULT_OUT = REPO / "python" / "maskid" / "data" / "models"
VARIANTS = {"edgeface-xs": "edgeface_xs_q.pt", "edgeface-xxs": "edgeface_xxs_q.pt"}
VERSION = "edgeface-2024+c1"
SOURCE_REPO = "yayoimizuha/face_recognition_train@3e631e35"
LICENCE = "BSD-3-Clause"
INPUT_SIZE = 112
OPSET = 17
PARITY_ATOL = 1e-4
# insightface / ArcFace 112 x 112 five-point template (left eye, right eye, nose, mouth corners).
ARCFACE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


def contract(name: str) -> ModelContract:
    return ModelContract(
        name=name,
        input_size=INPUT_SIZE,
        chip_geometry="similarity",
        chip_template=tuple((x / INPUT_SIZE, y / INPUT_SIZE) for x, y in ARCFACE_112),
        landmark_weights=ALL_POINTS,
        color_order="RGB",
        mean=(127.5, 127.5, 127.5),
        scale=1 / 127.5,
        descriptor_dim=512,
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(model: EdgeFace, path: Path) -> None:
    """torch.onnx.export (TorchScript exporter), opset 17, dynamic batch."""
    x = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        # The legacy exporter announces its own deprecation, and the positional encoding's grid
        # size is meant to be a trace constant (the graph's H x W is fixed).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["descriptor"],
            dynamic_axes={"input": {0: "N"}, "descriptor": {0: "N"}},
            do_constant_folding=True,
        )


def compact_linears(model: onnx.ModelProto, sd: dict) -> int:
    """Store each Linear weight initializer as the checkpoint's int8 tensor, Cast to float and
    multiplied by its per-tensor scale.

    The exporter writes a Linear's weight either as is ([out, in], Gemm) or transposed ([in, out],
    MatMul); each initializer equal to a dequantized checkpoint weight (or its transpose) is
    replaced by the int8 values in the same layout and Cast -> (Sub zero point) -> Mul nodes that
    output the same name. In float32 that is exactly torch's dequantize() of these per-tensor
    weights, and ONNX Runtime folds the constant subgraph once at load, so inference runs the
    same float MatMuls as a plain fp32 file. (Not DequantizeLinear: ONNX Runtime's extended
    optimisations fuse DequantizeLinear -> MatMul into a kernel that also quantizes the
    activations, which moves the descriptors by ~0.02.) Returns the number of weights replaced;
    every Linear of the checkpoint must be found exactly once."""
    wanted: dict[tuple[tuple[int, ...], bytes], tuple[str, np.ndarray, float, int]] = {}
    for key, (w, _bias) in ((k, v) for k, v in sd.items() if k.endswith(_PACKED)):
        prefix = key[: -len(_PACKED)]
        if w.qscheme() != torch.per_tensor_affine:
            raise ModelError(f"{prefix}: only per-tensor int8 weights can be stored compactly")
        q = w.int_repr().numpy()
        f = w.dequantize().numpy()
        for qq, ff in ((q, f), (q.T, f.T)):
            ff = np.ascontiguousarray(ff, dtype=np.float32)
            wanted[(ff.shape, ff.tobytes())] = (
                prefix,
                np.ascontiguousarray(qq),
                w.q_scale(),
                w.q_zero_point(),
            )
    graph = model.graph
    found: dict[str, str] = {}
    new_inits, dq_nodes = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        hit = wanted.get((arr.shape, arr.tobytes())) if arr.dtype == np.float32 else None
        if hit is None:
            new_inits.append(init)
            continue
        prefix, q, scale, zp = hit
        if prefix in found:
            raise ModelError(
                f"{prefix}: its weight appears twice in the graph ({found[prefix]}, {init.name})"
            )
        found[prefix] = init.name
        base = init.name
        new_inits += [
            numpy_helper.from_array(q.astype(np.int8), base + "_int8"),
            numpy_helper.from_array(np.array(scale, dtype=np.float32), base + "_scale"),
        ]
        dq_nodes.append(
            helper.make_node("Cast", [base + "_int8"], [base + "_q"], to=onnx.TensorProto.FLOAT)
        )
        q_float = base + "_q"
        if zp != 0:
            new_inits.append(
                numpy_helper.from_array(np.array(zp, dtype=np.float32), base + "_zero_point")
            )
            dq_nodes.append(
                helper.make_node("Sub", [q_float, base + "_zero_point"], [base + "_qz"])
            )
            q_float = base + "_qz"
        dq_nodes.append(helper.make_node("Mul", [q_float, base + "_scale"], [base]))
    prefixes = {k[: -len(_PACKED)] for k in sd if k.endswith(_PACKED)}
    if set(found) != prefixes:
        raise ModelError(
            f"Linear weights not found in the exported graph: {sorted(prefixes - set(found))}"
        )
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(dq_nodes + nodes)  # constants first keeps the graph topologically sorted
    return len(found)


def parity_inputs(n: int = 4, seed: int = 0) -> np.ndarray:
    """A fixed batch of normalised pseudo-images (smooth, face-sized contrasts)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 14, 14, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(
        coarse, size=INPUT_SIZE, mode="bilinear", align_corners=False
    )
    x = x + 0.1 * torch.randn(n, 3, INPUT_SIZE, INPUT_SIZE, generator=g)
    return x.clamp(-1, 1).numpy().astype(np.float32)


def onnx_outputs(path: Path, x: np.ndarray, optimize: bool = True) -> np.ndarray:
    """ONNX Runtime (CPU, one thread) on `x`, with all graph optimisations or none."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["descriptor"], {"input": x})[0]


def convert(src: Path, name: str, out_dir: Path, compact: bool = True) -> Path:
    """Write `out_dir/<name>.onnx` from the checkpoint `src`; returns the path."""
    sd = read_checkpoint(src)
    model = edgeface_from_state_dict(sd, what=f"EdgeFace {src.name}")
    meta = contract(name).to_metadata()
    meta.update(
        {
            "version": VERSION,
            "source": f"{SOURCE_REPO}:checkpoints/{src.name}",
            "source_sha256": sha256_file(src),
            "licence": LICENCE,
        }
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}.onnx"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".onnx.tmp", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_onnx(model, tmp)
        proto = onnx.load(str(tmp))
        if compact:
            compact_linears(proto, sd)
        helper.set_model_props(proto, meta)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        x = parity_inputs()
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        diff = max(float(np.abs(onnx_outputs(tmp, x, opt) - ref).max()) for opt in (True, False))
        if not diff <= PARITY_ATOL:
            raise ModelError(
                f"{name}: ONNX differs from the torch module by {diff:.3g} > {PARITY_ATOL}"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_licence(src_dir: Path, out_dir: Path) -> Path:
    """licences/edgeface.LICENSE: a 3-line header naming the source, then the BSD text."""
    text = (src_dir / "LICENSE").read_text(encoding="utf-8")
    header = (
        "EdgeFace XS / XXS weights (shipped as edgeface-xs.onnx, edgeface-xxs.onnx), Idiap Research Institute.\n"
        f"Source: {SOURCE_REPO}:checkpoints/ (a mirror of Idiap's EdgeFace repository), {LICENCE}.\n"
        "Converted by maskid's training/maskid_train/convert_edgeface.py; the licence text follows unchanged.\n\n"
    )
    dest = out_dir / "licences" / "edgeface.LICENSE"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(header + text, encoding="utf-8")
    os.replace(tmp, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with the .pt checkpoints")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the .onnx files")
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="default: both")
    ap.add_argument("--fp32", action="store_true", help="store the Linear weights as float32")
    args = ap.parse_args(argv)
    try:
        for name in args.variant or sorted(VARIANTS):
            path = convert(args.src / VARIANTS[name], name, args.out, compact=not args.fp32)
            print(f"{path}  {path.stat().st_size / 1e6:.2f} MB")
        lic = write_licence(args.src, args.out)
        print(lic)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 6
    return 0


if __name__ == "__main__":
    sys.exit(main())
