"""A real Milvus server for the tests: `milvus-lite server` as a child process on a loopback port.

milvus-lite (PyPI, Apache-2.0) serves the Milvus gRPC protocol from one process, persisting to
a data directory (a write-ahead log, then Parquet segments). The tests start it, SIGKILL it and
start it again on the same data, as an operator's crash would.

    server = MilvusServer(tmp_path / "milvus")
    server.start()
    uri = server.uri("my_gallery")          # milvus://127.0.0.1:PORT/my_gallery
    server.kill(); server.start()           # same port, same data
    server.stop()
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 60.0  # seconds; it starts in about 1 s on the 2-core CI machine


def missing_reason() -> str | None:
    """Why Milvus tests cannot run here (None: they can)."""
    for module, package in (("pymilvus", "pymilvus"), ("milvus_lite", "milvus-lite")):
        if importlib.util.find_spec(module) is None:
            return f"{package} is not installed (pip install '.[milvus]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class MilvusServer:
    """One milvus-lite server process over `data_dir`, listening on HOST:`port`."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.with_name(data_dir.name + ".log")

    def uri(self, collection: str) -> str:
        return f"milvus://{HOST}:{self.port}/{collection}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections (RuntimeError with its log
        if it does not)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the server is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "milvus_lite",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--host",
            HOST,
            "--port",
            str(self.port),
        ]
        # Output goes to a file: a pipe nobody reads would block the server once full.
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if b"listening on" in self.log.read_bytes() and self._accepts():
                return
            time.sleep(0.05)
        self.kill()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"milvus-lite did not start on {HOST}:{self.port}:\n{tail}")

    def _accepts(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 0.5):
            return True
        return False

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (what a crash or the OOM killer does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        """A clean shutdown (SIGINT, as Ctrl-C), then SIGKILL if it takes over 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.kill()
