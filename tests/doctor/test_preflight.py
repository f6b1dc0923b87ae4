"""The no-measurement preflight that `roost serve` runs at start."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from roost.doctor.limits import min_workers
from roost.doctor.preflight import preflight

from .support import FIXTURE_PROC, RLIMIT_HERE, write


@pytest.fixture(autouse=True)
def here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resource, "getrlimit", lambda _which: RLIMIT_HERE)


def test_one_warning_per_shortfall_with_fix() -> None:
    lines = preflight(1_000_000, 2, proc_root=str(FIXTURE_PROC))
    nofile = [line for line in lines if "RLIMIT_NOFILE" in line]
    assert len(nofile) == 2
    assert all(line.startswith("fail: ") for line in nofile)
    assert all(f"--workers {min_workers(1_000_000, 20_000)}" in line for line in nofile)
    assert all("Fix: " in line and "when hit: " in line for line in lines)
    assert not [line for line in lines if "fs.file-max" in line or "fs.nr_open" in line]
    somaxconn = [line for line in lines if "somaxconn" in line]
    assert somaxconn and "sysctl -w net.core.somaxconn=5000" in somaxconn[0]


def test_quiet_when_everything_fits() -> None:
    assert preflight(1000, 2, proc_root=str(FIXTURE_PROC)) == []


def test_file_max_shortfall(proc_root: Path) -> None:
    write(proc_root, "sys/fs/file-max", "50000\n")
    lines = preflight(100_000, 10, proc_root=str(proc_root))
    assert any(line.startswith("fail: fs.file-max is 50,000") for line in lines)


def test_unreadable_proc_does_not_crash(tmp_path: Path) -> None:
    assert preflight(1000, 2, proc_root=str(tmp_path)) == []
