"""Convert Intel OMZ face-reidentification-retail-0095 (OpenVINO IR v11) into maskid's ONNX.

Reads the IR with maskid's own reader (`maskid.networks.openvino_ir`), translates it node for node
(`maskid.networks.openvino_ir.build_onnx`: weights kept as the IR's float16, cast to float32 in the graph) and
writes the model contract plus provenance into the file's metadata_props. Also copies the
Apache-2.0 licence beside the shipped models. Needs neither OpenVINO nor torch.

Usage:
    PYTHONPATH=training python -m maskid_train.convert_omz [--ir PATH.xml] [--out python/maskid/data/models/omz-face-reid-0095.onnx]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

from maskid.errors import MaskidError
from maskid.networks.contract import ALL_POINTS, ModelContract
from maskid.networks.openvino_ir import build_onnx, read_ir

REPO = Path(__file__).resolve().parents[2]
SHARED_MODEL = REPO.parent / "shared" / "models" / "omz-face-reid-0095"
DEFAULT_IR = SHARED_MODEL / "FP16" / "face-reidentification-retail-0095.xml"
DEFAULT_OUT = REPO / "python" / "maskid" / "data" / "models" / "omz-face-reid-0095.onnx"
LICENCE_DIR = REPO / "python" / "maskid" / "data" / "models" / "licences"

NAME = "omz-face-reid-0095"
VERSION = "omz-2023.0+c1"
SOURCE = (
    "MisterFoziljon/OpenVino-Face-Recognition@93a6a950:"
    "models/face-reidentification-retail-0095/FP16/"
)
# sha256 of the FP16 .bin of OMZ's 2023.0 release (shared/models/README.md).
SOURCE_SHA256 = "241229ca3d206321868d46ce74a3c0b06c49cea58db7dc70b2e842ff287545d1"
LICENCE = "Apache-2.0"

# OMZ's five-point template (README of the model), fractions of the 128-pixel side.
OMZ_TEMPLATE = (
    (0.31556875, 0.46157411),
    (0.68262292, 0.46157411),
    (0.50026250, 0.64050536),
    (0.34947188, 0.82469196),
    (0.65343646, 0.82469196),
)

CONTRACT = ModelContract(
    name=NAME,
    input_size=128,
    chip_geometry="similarity",
    chip_template=OMZ_TEMPLATE,
    landmark_weights=ALL_POINTS,
    color_order="BGR",
    mean=(0.0, 0.0, 0.0),
    scale=1.0,
    descriptor_dim=256,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metadata(bin_sha256: str) -> dict[str, str]:
    return {
        **CONTRACT.to_metadata(),
        "version": VERSION,
        "source": SOURCE,
        "source_sha256": bin_sha256,
        "licence": LICENCE,
    }


def convert(ir: Path, allow_other: bool = False) -> bytes:
    """The serialized ONNX model for the IR at `ir` (its .bin beside it)."""
    digest = sha256(ir.with_suffix(".bin"))
    if digest != SOURCE_SHA256 and not allow_other:
        raise MaskidError(
            f"{ir.with_suffix('.bin')} is not the OMZ 2023.0 FP16 release (sha256 {digest[:12]}...); "
            "its provenance would be wrong (pass --allow-other to convert it anyway)"
        )
    model = build_onnx(read_ir(ir), metadata(digest))
    return model.SerializeToString()


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def licence_text(licence: Path) -> bytes:
    header = (
        f"{NAME}: Intel Open Model Zoo face-reidentification-retail-0095 (weights, converted to ONNX by maskid)\n"
        f"Source: {SOURCE} (OMZ 2023.0 release); licence text from openvinotoolkit/open_model_zoo@7ef5b91f\n"
        f"Licence: {LICENCE}, reproduced below.\n\n"
    )
    return header.encode() + licence.read_bytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ir", type=Path, default=DEFAULT_IR, help="the IR's .xml (.bin beside it)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="ONNX file to write")
    ap.add_argument(
        "--licence",
        type=Path,
        default=SHARED_MODEL / "LICENSE",
        help="licence text to copy into python/maskid/data/models/licences/",
    )
    ap.add_argument(
        "--allow-other", action="store_true", help="convert an IR whose .bin is not the known one"
    )
    args = ap.parse_args(argv)
    try:
        data = convert(args.ir, args.allow_other)
        write_atomic(args.out, data)
        if args.licence.is_file():
            write_atomic(LICENCE_DIR / f"{NAME}.LICENSE", licence_text(args.licence))
        else:
            print(f"warning: no licence text at {args.licence}", file=sys.stderr)
    except (MaskidError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({len(data) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
