"""Start a fresh server (roost or a peer) on a free port with a temporary data dir.

The server's secret is written before it starts (``roost.auth.load_secret``
creates ``<data-dir>/secret``), so the load generator signs tokens with the
same one. The server runs in its own session, its output goes to
``<data-dir>/server.log``, and ``stop`` ends its process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import roost
from roost.auth import load_secret
from roost.errors import ConfigError

TARGETS = ("roost", "peer:websockets", "peer:picows")

PEERS_DIR = Path(
    os.environ.get("ROOST_PEERS_DIR", Path(roost.__file__).resolve().parents[2] / "bench" / "peers")
)
"""Where bench/peers/*.py live: the checkout this package runs from."""


def server_command(target: str, port: int, data_dir: Path, workers: int | None = None) -> list[str]:
    """The command that starts ``target``: the one place to adjust roost's flags."""
    if target == "roost":
        cmd = [
            sys.executable,
            "-m",
            "roost",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ]
        if workers:
            cmd += ["--workers", str(workers)]
        return cmd
    if target.startswith("peer:") and target[5:] in ("websockets", "picows"):
        if workers and workers > 1:
            raise ConfigError(f"--workers: {target} is a single process")
        script = PEERS_DIR / f"{target[5:]}_peer.py"
        if not script.exists():
            raise ConfigError(f"{script} not found (set ROOST_PEERS_DIR)")
        return [sys.executable, str(script), "--port", str(port), "--data-dir", str(data_dir)]
    raise ConfigError(f"--target must be one of {', '.join(TARGETS)}, not {target!r}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Server:
    """A server process this run started; a context manager that stops it."""

    def __init__(
        self,
        target: str,
        *,
        workers: int | None = None,
        data_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
        ready_timeout: float = 30.0,
    ) -> None:
        self.target = target
        self.own_dir = data_dir is None
        self.data_dir = (
            Path(tempfile.mkdtemp(prefix="roost-bench-")) if data_dir is None else data_dir
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.secret = load_secret(self.data_dir)
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.command = [*server_command(target, self.port, self.data_dir, workers), *extra_args]
        env = dict(os.environ)
        src = str(Path(roost.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (src, env.get("PYTHONPATH"))))
        self.log_path = self.data_dir / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self._wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                status = self.proc.returncode
                raise ConfigError(
                    f"{' '.join(self.command)} exited with {status}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            time.sleep(0.05)
        raise ConfigError(
            f"{' '.join(self.command)} not accepting after {timeout:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
