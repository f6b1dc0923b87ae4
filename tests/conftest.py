"""Shared fixtures: a real roost server in a subprocess, on a free port.

Tests talk to it over real sockets; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from roost.auth import issue_token, load_secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RoostServer:
    """A ``roost serve`` subprocess that can be stopped, killed and restarted
    on the same port and data dir."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, user: str, ttl: float | None = None) -> str:
        return issue_token(load_secret(self.data_dir), user, ttl)

    def ws_url(self, user: str) -> str:
        return f"{self.url}?token={self.token(user)}"

    def start(self) -> RoostServer:
        cmd = [sys.executable, "-m", "roost", "serve", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir), *self.args]
        with open(self.log, "ab") as log:
            # Its own process group, so teardown can reach its workers too.
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"roost exited with {self.proc.returncode}:\n{self.log.read_text()}"
                )
            try:
                if httpx.get(f"{self.http}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"roost did not start:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """kill -9 the supervisor; its workers die with it (PR_SET_PDEATHSIG)."""
        assert self.proc is not None
        pid = self.proc.pid
        self.stop(signal.SIGKILL)
        # The workers are gone before the port is reused, as after a crash.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        raise RuntimeError("workers outlived their supervisor")

    def restart(self) -> RoostServer:
        self.stop()
        return self.start()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[type[RoostServer]]:
    """Build servers with extra flags: ``make_server("--inbox-cap", "3")``."""
    servers: list[RoostServer] = []

    def make(*args: str) -> RoostServer:
        server = RoostServer(tmp_path / f"data{len(servers)}", *args)
        servers.append(server)
        return server.start()

    yield make  # type: ignore[misc]
    for server in servers:
        if server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait()


@pytest.fixture
def server(make_server) -> RoostServer:  # type: ignore[no-untyped-def]
    return make_server()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # Loopback only: keep any proxy settings of the environment out of httpx.
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
