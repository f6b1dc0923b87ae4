"""Fixtures for the doctor tests: a copy of this machine's /proc files, editable per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from roost.doctor.limits import Host

from .support import FIXTURE_PROC, RLIMIT_HERE


@pytest.fixture
def proc_root(tmp_path: Path) -> Path:
    """A writable copy of tests/doctor/fixtures/proc."""
    root = tmp_path / "proc"
    shutil.copytree(FIXTURE_PROC, root)
    return root


@pytest.fixture
def host_for(proc_root: Path) -> Callable[..., Host]:
    """Host(proc_root) with this machine's RLIMIT_NOFILE and capabilities unless overridden."""

    def make(
        rlimit: tuple[int, int] = RLIMIT_HERE,
        cap_sys_resource: bool | None = False,
        root: Path | None = None,
    ) -> Host:
        return Host(
            root or proc_root,
            getrlimit=lambda _which: rlimit,
            cap_sys_resource=cap_sys_resource,
        )

    return make
