"""What each command loads (issue 17): `list`, `remove` and `--help` load no network and no ONNX
Runtime; `recognize` with the shipped default model never imports `onnx` (no conversion runs).

Each command runs in a fresh interpreter, as a user's would; the child prints the heavy modules
it ended up with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maskid.paths import PACKAGE_DATA

PROBE = """
import json, sys
sys.argv = ["maskid", *json.loads(sys.argv[1])]
from maskid.apps.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = ("onnx", "onnxruntime", "hnswlib", "cv2", "PIL", "matplotlib", "torch", "tqdm")
print(json.dumps({"exit": code, "modules": sorted(
    m for m in sys.modules if m.split(".")[0] in heavy)}), file=sys.stderr)
"""

NETWORKS = ("onnx", "onnxruntime")


def loaded(*args: str) -> tuple[int, set[str]]:
    """Run `maskid ARGS` in a fresh interpreter: its exit code and its heavy top-level modules."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["exit"], {m.split(".")[0] for m in report["modules"]}


def photo(person: str) -> Path:
    folder = PACKAGE_DATA / "demo" / "celebrities" / person
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))[0]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two people enrolled with the shipped default model, from the bundled photos."""
    g = tmp_path_factory.mktemp("startup") / "gallery"
    for person in ("Colin_Powell", "Hugo_Chavez"):
        code, _ = loaded("enroll", person, str(photo(person)), "--gallery", str(g))
        assert code == 0
    return g


def test_help_loads_no_network() -> None:
    code, modules = loaded("--help")
    assert code == 0
    assert not modules & {*NETWORKS, "cv2", "hnswlib"}, modules


def test_list_and_remove_load_no_network(gallery: Path, tmp_path: Path) -> None:
    code, modules = loaded("list", "--gallery", str(gallery))
    assert code == 0
    assert not modules & {*NETWORKS, "cv2"}, modules
    copy = tmp_path / "copy"
    shutil.copytree(gallery, copy)
    code, modules = loaded("remove", "Hugo_Chavez", "--gallery", str(copy))
    assert code == 0
    assert not modules & {*NETWORKS, "cv2"}, modules
    code, _ = loaded("list", "--gallery", str(copy))
    assert code == 0


def test_recognize_with_the_shipped_default_does_not_import_onnx(
    gallery: Path, tmp_path: Path
) -> None:
    from maskid.networks.registry import available_models, default_model, model_path

    if model_path(default_model()).parent != PACKAGE_DATA / "models":
        pytest.skip(f"the default model {default_model()} is built at first use, not shipped")
    assert default_model() in available_models()
    args = ["recognize", "--image", str(photo("Colin_Powell")), "--gallery", str(gallery)]
    code, modules = loaded(*args, "--json", "--out", str(tmp_path / "out.jpg"))
    assert code == 0
    assert "onnxruntime" in modules  # it did run the networks
    assert "onnx" not in modules, modules


def test_builder_key_reads_no_onnx() -> None:
    """The converted models' cache key (weights + builder source) is computed without onnx."""
    code = (
        "import sys; from maskid.networks import registry as models; k = models.builder_key(); "
        "print(len(k), 'onnx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["8", "False"]


def test_runtime_package_never_imports_torch() -> None:
    """torch is for training and export: no module of the installed package may import it
    (a lazy import inside a function counts too)."""
    import ast

    package = PACKAGE_DATA.parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "torch" or n.startswith("torch.") for n in names):
                offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert len(list(package.rglob("*.py"))) > 30  # the package itself, not an empty folder
    assert not offenders, offenders
