"""Helpers shared by the doctor tests."""

from __future__ import annotations

from pathlib import Path

FIXTURE_PROC = Path(__file__).parent / "fixtures" / "proc"
"""Copies of this machine's /proc files (2 cores, 24 GiB, Linux 6.18), in their real layout."""

RLIMIT_HERE = (20_000, 20_000)
"""This machine kind: RLIMIT_NOFILE fixed at 20,000, and no CAP_SYS_RESOURCE (NOTES.md)."""


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
