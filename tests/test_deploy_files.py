"""The Jetson deployment files against the real CLI and scripts: the systemd unit, its
environment example, the L4T Dockerfile, .dockerignore and the commands in docs/jetson.md.

None of these run here (no Jetson, no systemd service, no L4T image), so what is checked is
what would break first in the field: every `maskid` subcommand and flag they use exists and
parses, every script flag exists, and the unit has the settings the guide promises.
"""

from __future__ import annotations

import configparser
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from maskid.apps.cli import main
from maskid.errors import GalleryError, ModelError, UsageError

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "deploy" / "maskid-camera.service"
ENV_EXAMPLE = ROOT / "deploy" / "maskid-camera.env"
DOCKERFILE = ROOT / "docker" / "Dockerfile.l4t"
DOCKERIGNORE = ROOT / ".dockerignore"
GUIDE = ROOT / "docs" / "jetson.md"
SCRIPT = re.compile(r"(?:^|/)((?:engines|benchmarks)/\w+\.py)$")


# --- what the real CLI and scripts accept ---------------------------------------------------


def option_flags(help_text: str) -> set[str]:
    """The flags listed in the options part of a --help text (click or argparse)."""
    flags: set[str] = set()
    in_options = False
    for line in help_text.splitlines():
        if re.match(r"^(Options|options|optional arguments):", line):
            in_options = True
            continue
        if in_options and re.match(r"^\S", line):  # the next section
            in_options = False
        if in_options and re.match(r"^\s+-", line):
            spec = re.split(r"\s{2,}", line.strip())[0]  # the flags column, not the help text
            flags.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", spec))
    return flags


@functools.cache
def maskid_flags(command: str) -> frozenset[str]:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    return frozenset(option_flags(result.output))


@functools.cache
def script_help(script: str) -> str:
    out = subprocess.run(
        [sys.executable, script, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, f"{script} --help failed: {out.stderr[-2000:]}"
    return out.stdout


def check_maskid(args: list[str], where: str) -> None:
    """`maskid ARGS` must name a real subcommand, use only its flags, and parse."""
    assert args, f"{where}: `maskid` without a subcommand"
    name, rest = args[0], args[1:]
    assert name in main.commands, f"{where}: maskid has no `{name}` command"
    flags = {a.split("=", 1)[0] for a in rest if a.startswith("-")}
    unknown = flags - maskid_flags(name)
    assert not unknown, f"{where}: `maskid {name} --help` lists no {sorted(unknown)}"
    try:  # types, choices and required options, without running the command
        main.commands[name].make_context(name, list(rest))
    except click.ClickException as exc:
        pytest.fail(f"{where}: `maskid {' '.join(args)}` does not parse: {exc.format_message()}")


def check_script(script: str, args: list[str], where: str) -> None:
    """`python SCRIPT ARGS`: the script exists and its --help lists every flag (and choice)."""
    assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
    text = script_help(script)
    known = option_flags(text)
    choices = {f: set(c.split(",")) for f, c in re.findall(r"(--[\w-]+) \{([^}]*)\}", text)}
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        flag = arg.split("=", 1)[0]
        assert flag in known, f"{where}: `{script} --help` lists no {flag}"
        if flag in choices:
            value = arg.split("=", 1)[1] if "=" in arg else args[i + 1]
            assert value in choices[flag], f"{where}: {flag} {value} not in {choices[flag]}"


# --- reading the files ----------------------------------------------------------------------


def read_env(text: str) -> dict[str, str]:
    """A systemd EnvironmentFile: KEY=VALUE lines, '#' comments, optional double quotes."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_]\w*", key), f"not KEY=VALUE: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        env[key] = value
    return env


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(SERVICE.read_text())
    return parser


def expand_exec(line: str, env: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion: ${VAR} stays one word, $VAR splits on whitespace."""
    words: list[str] = []
    for token in shlex.split(line):
        one, split = re.fullmatch(r"\$\{(\w+)\}", token), re.fullmatch(r"\$(\w+)", token)
        name = (one or split)[1] if (one or split) else None
        if name is None:
            assert "$" not in token, f"unsupported expansion in ExecStart: {token!r}"
            words.append(token)
            continue
        assert name in env, f"ExecStart uses ${name}, which {ENV_EXAMPLE.name} does not set"
        words.extend([env[name]] if one else env[name].split())
    return words


def fenced_commands(markdown: str) -> list[list[str]]:
    """Shell commands in ``` blocks: continuations joined, split at && | ;, prefixes removed."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh)?\n(.*?)^```", markdown, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            segment: list[str] = []
            for token in [*lexer, ";"]:
                if set(token) <= set(";&|"):
                    if segment:
                        commands.append(segment)
                    segment = []
                else:
                    segment.append(token)
    return commands


def strip_prefixes(words: list[str]) -> list[str]:
    """Drop `sudo [-u USER]`, `env` and VAR=value assignments in front of the program."""
    i = 0
    while i < len(words):
        if words[i] in ("sudo", "env"):
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 2 if words[i] == "-u" else 1
        elif re.fullmatch(r"[A-Za-z_]\w*=\S*", words[i]):
            i += 1
        else:
            break
    return words[i:]


# --- the systemd unit -----------------------------------------------------------------------


def test_unit_runs_camera_as_a_restartable_service() -> None:
    u = unit()
    assert {"Unit", "Service", "Install"} <= set(u.sections())
    service = u["Service"]
    assert service.get("User") not in (None, "", "root")
    assert "video" in service.get("SupplementaryGroups", "").split()
    assert service.get("Restart") == "on-failure"
    assert float(service.get("RestartSec", "0").rstrip("s")) > 0
    assert service.get("KillSignal") == "SIGTERM"
    assert float(service.get("TimeoutStopSec", "0").rstrip("s")) >= 10  # closing an .mp4
    assert service.get("StandardOutput") == "journal"  # the JSON events
    assert service.get("EnvironmentFile", "").lstrip("-").startswith("/etc/")
    assert service.get("PrivateTmp", "no") == "no", "csi:// needs /tmp/argus_socket"
    assert u["Install"].get("WantedBy") == "multi-user.target"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own parser: unknown keys and unparsable values are reported, not fatal."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    copy = tmp_path / SERVICE.name  # verify wants the file name to be the unit name
    copy.write_text(SERVICE.read_text())
    out = subprocess.run(
        [tool, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    # The only complaint allowed is the venv that does not exist on this machine.
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if line.strip() and "/opt/maskid/venv/bin/maskid is not executable" not in line
    ]
    assert not problems, problems


def test_unit_does_not_restart_on_errors_a_restart_cannot_fix() -> None:
    codes = {int(c) for c in unit()["Service"]["RestartPreventExitStatus"].split()}
    assert codes == {UsageError.exit_code, GalleryError.exit_code, ModelError.exit_code}


def test_unit_execstart_is_a_camera_command_the_cli_accepts() -> None:
    env = read_env(ENV_EXAMPLE.read_text())
    assert {"SOURCE", "GALLERY"} <= set(env)
    words = expand_exec(unit()["Service"]["ExecStart"], env)
    assert Path(words[0]).is_absolute() and Path(words[0]).name == "maskid"
    assert words[1] == "camera"
    assert {"--json", "--no-display"} <= set(words)  # events to the journal, no window
    assert words[words.index("--source") + 1] == env["SOURCE"]
    check_maskid(words[1:], SERVICE.name)


def example_args() -> list[str]:
    """MASKID_ARGS as set in the example and as shown in its comments."""
    text = ENV_EXAMPLE.read_text()
    shown = re.findall(r"^#\s*MASKID_ARGS=(.*)$", text, re.M)
    return [read_env(text)["MASKID_ARGS"], *shown]


@pytest.mark.parametrize("extra", example_args())
def test_env_example_extra_args_parse(extra: str) -> None:
    env = {**read_env(ENV_EXAMPLE.read_text()), "MASKID_ARGS": extra}
    words = expand_exec(unit()["Service"]["ExecStart"], env)
    check_maskid(words[1:], f"{ENV_EXAMPLE.name} MASKID_ARGS={extra}")


def test_env_example_raw_pipeline_stays_one_argument() -> None:
    pipelines = re.findall(r'^#\s*"([^"]* ! [^"]*)"', ENV_EXAMPLE.read_text(), re.M)
    assert pipelines, "the example shows a raw GStreamer pipeline"
    for pipeline in pipelines:
        env = read_env(f'SOURCE="{pipeline}"\nGALLERY=/g\nMASKID_ARGS=')
        words = expand_exec(unit()["Service"]["ExecStart"], env)
        assert words[words.index("--source") + 1] == pipeline
        assert pipeline.rstrip().split(" ! ")[-1].startswith("appsink")


# --- the Dockerfile and .dockerignore -------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def maskid_requirements() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for d in deps]  # type: ignore[index]
    return dict(zip(names, deps, strict=True))


def test_dockerfile_builds_on_l4t_and_runs_the_camera() -> None:
    steps = dockerfile_instructions()
    base = dict(s for s in steps if s[0] == "ARG")["ARG"]
    assert re.search(r"nvcr\.io/nvidia/l4t-(jetpack|tensorrt):r3[6-9]", base), base
    assert ("FROM", "${BASE}") in steps
    run = " ".join(rest for word, rest in steps if word == "RUN")
    assert "--system-site-packages" in run
    assert "MASKID_CUDA=ON" in run and "MASKID_TENSORRT=" in run
    entry = [json.loads(rest) for word, rest in steps if word == "ENTRYPOINT"]
    cmd = [json.loads(rest) for word, rest in steps if word == "CMD"]
    assert entry == [["maskid"]] and len(cmd) == 1
    assert {"--json", "--no-display"} <= set(cmd[0])
    assert cmd[0][cmd[0].index("--source") + 1] == "csi://0"
    check_maskid(cmd[0], DOCKERFILE.name)


def uninstalled(text: str) -> set[str]:
    found = re.findall(r"pip uninstall -y ([\w. -]+?)(?:\s*(?:&&|\\|$))", text, re.M)
    return {name.lower() for group in found for name in group.split()}


def test_uninstalled_packages_are_real_maskid_dependencies() -> None:
    """The Dockerfile and the guide remove the PyPI OpenCV (no GStreamer) and ORT (CPU only) by
    name: renaming the dependency in pyproject.toml must not leave them removing nothing."""
    deps = maskid_requirements()
    docker, guide = uninstalled(DOCKERFILE.read_text()), uninstalled(GUIDE.read_text())
    assert docker and guide
    assert (docker | guide) <= set(deps), sorted((docker | guide) - set(deps))
    opencv = {n for n in deps if n.startswith("opencv")}
    assert opencv and opencv <= docker and opencv <= guide


def test_dockerignore_drops_local_state_but_keeps_the_sources() -> None:
    patterns = [
        p.strip().rstrip("/")
        for p in DOCKERIGNORE.read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for path in (".git", ".venv", "build"):
        assert any(fnmatch.fnmatch(path, p) for p in patterns), f"{path} is sent to docker"
    needed = ["pyproject.toml", "CMakeLists.txt", "README.md", "cpp", "python", "engines"]
    for path in needed:
        assert (ROOT / path).exists()
        hit = [p for p in patterns if fnmatch.fnmatch(path, p)]
        assert not hit, f".dockerignore drops {path} (needed by pip install .): {hit}"


# --- the guide ------------------------------------------------------------------------------


def test_guide_commands_use_real_subcommands_and_flags() -> None:
    seen_maskid, seen_scripts = set(), set()
    for words in fenced_commands(GUIDE.read_text()):
        where = f"docs/jetson.md: {' '.join(words)}"
        for i, word in enumerate(words):
            match = SCRIPT.search(word)
            if match:
                check_script(match[1], words[i + 1 :], where)
                seen_scripts.add(match[1])
                break
        else:
            program = strip_prefixes(words)
            if program and Path(program[0]).name == "maskid":
                check_maskid(program[1:], where)
                seen_maskid.add(program[1] if len(program) > 1 else "")
    # The extraction itself works: the guide's main commands were found and checked.
    assert {"backends", "camera", "enroll"} <= seen_maskid, seen_maskid
    assert "engines/build_engine.py" in seen_scripts, seen_scripts


def test_guide_mentions_only_files_that_exist() -> None:
    text = GUIDE.read_text() + (ROOT / "README.md").read_text()
    paths = set(re.findall(r"`((?:deploy|docker|docs|engines|benchmarks)/[\w./-]+)`", text))
    paths |= set(re.findall(r"\]\(((?:docs|deploy|docker)/[\w./-]+)\)", text))  # README links
    assert "docs/jetson.md" in paths and "deploy/maskid-camera.service" in paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_guide_names_the_keys_maskid_backends_prints() -> None:
    out = CliRunner().invoke(main, ["backends"])
    assert out.exit_code == 0, out.output
    printed = {line.split(":", 1)[0] for line in out.output.splitlines() if ":" in line}
    text = GUIDE.read_text()
    listing = text[text.index("maskid backends\n```") :]
    listing = listing[: listing.index("\n\n", listing.index("\n- "))]  # the bullet list
    assert set(re.findall(r"`([a-z_]+)`:", listing)) == printed
    expectation = text[text.index("On an Orin set up as above") :].split("\n\n")[0]
    expected = set(re.findall(r"`([a-z_]+): [^`]+`", expectation))  # "`cuda_kernel: True`"
    assert expected and expected <= printed, expected - printed
