"""Starting and stopping servers for a run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from roost.bench.spawn import PEERS_DIR, Server, server_command
from roost.errors import ConfigError


def test_server_command() -> None:
    d = Path("/tmp/d")
    assert server_command("roost", 9, d) == [
        sys.executable, "-m", "roost", "serve", "--port", "9", "--data-dir", "/tmp/d",
    ]  # fmt: skip
    assert server_command("roost", 9, d, workers=4)[-2:] == ["--workers", "4"]
    assert server_command("peer:picows", 9, d)[1] == str(PEERS_DIR / "picows_peer.py")
    with pytest.raises(ConfigError):
        server_command("peer:websockets", 9, d, workers=2)
    with pytest.raises(ConfigError):
        server_command("nginx", 9, d)


def test_spawned_server_gets_a_secret_and_is_cleaned_up() -> None:
    with Server("peer:websockets") as server:
        assert server.proc.poll() is None
        assert (server.data_dir / "secret").read_bytes().strip() == server.secret
        assert "listening on" in server.log_tail() or server.proc.poll() is None
        data_dir = server.data_dir
    assert server.proc.returncode is not None and not data_dir.exists()


def test_a_server_that_does_not_start_is_reported() -> None:
    with pytest.raises(ConfigError, match="exited with"):
        Server("peer:websockets", extra_args=("--fault", "bogus"))
