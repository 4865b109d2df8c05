"""Helpers for the reliability tests: a real `saic serve` in a subprocess, TLS test certificates,
and the rule for tests that need a system tool (fail in CI, skip locally).

A subprocess (not `ServerThread`) is what the fault tests need: they send it SIGTERM, watch
its exit code and stderr, and measure its memory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
READY_LINE = re.compile(r"saic serving HTTP on (?P<url>https?://[^ ]+)(?: and gRPC on (?P<grpc>\S+))?")


def need_tool(available: bool, what: str) -> None:
    """A missing system tool fails the test in CI (env CI set) and skips it elsewhere."""
    if available:
        return
    msg = f"{what} is not installed (make tools / scripts/setup/*.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


class ServerProcess:
    """`python -m saic.cli serve` on ephemeral loopback ports with the shipped model (CPU).

    with ServerProcess("--max-queue-size", "4") as srv:
        httpx.get(srv.http_url + "/readyz")
    """

    def __init__(self, *args: str, env: dict[str, str] | None = None, model_dir: Path = MODELS, wait_ready: bool = True):
        self.args = [
            sys.executable, "-m", "saic.cli", "serve",
            "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
            "--model-dir", str(model_dir), "--providers", "cpu", "--log-level", "INFO",
            *args,
        ]  # fmt: skip
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SAIC_")} | (env or {})
        self.env.setdefault("OMP_NUM_THREADS", "1")
        self.wait_ready = wait_ready
        self.lines: list[str] = []
        self.http_url = ""
        self.grpc_target = ""
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 120) -> "ServerProcess":
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=self.env, cwd=REPO,
        )  # fmt: skip
        threading.Thread(target=self._pump, daemon=True).start()
        if self.wait_ready:
            deadline = time.monotonic() + timeout
            while not self._ready.wait(0.1):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"server did not become ready:\n{self.log}")
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:  # stderr is merged into it
            self.lines.append(line.rstrip("\n"))
            m = READY_LINE.search(line)
            if m:
                self.http_url, self.grpc_target = m["url"], m["grpc"] or ""
                self._ready.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        time.sleep(0.1)  # let the pump thread read the last lines
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def run_server_expecting_exit(*args: str, model_dir: Path = MODELS, timeout: float = 120) -> tuple[int, str]:
    """Start `saic serve` that must exit by itself (bad configuration): (exit code, stderr)."""
    srv = ServerProcess(*args, model_dir=model_dir, wait_ready=False).start()
    try:
        rc = srv.wait(timeout)
    finally:
        srv.kill()
    return rc, srv.log


def tls_material(tmp: Path) -> dict[str, Any]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (trustme)."""
    trustme = pytest.importorskip("trustme", reason="trustme (dev extra) makes the test certificates")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp / "ca.pem", "cert": tmp / "server.pem", "key": tmp / "server.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    return paths
