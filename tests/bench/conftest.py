"""Fixtures for the bench tests: peer servers started once per module."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from roost.bench.spawn import Server

PEERS = ("peer:websockets", "peer:picows")


@pytest.fixture(scope="session")
def roost_serves() -> bool:
    """True once ``python -m roost serve`` exists (the server is built in parallel)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "roost", "serve", "--help"],
            capture_output=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


@pytest.fixture(scope="module", params=PEERS)
def peer(request: pytest.FixtureRequest) -> Iterator[Server]:
    with Server(request.param) as server:
        yield server
