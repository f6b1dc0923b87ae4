"""The /proc readers, on the real layout of this machine's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.doctor.procfs import Proc, ProcError

from .support import FIXTURE_PROC, write


def test_multi_value_sysctls_are_tab_separated_and_parse() -> None:
    proc = Proc(FIXTURE_PROC)
    assert "\t" in proc.text("sys/net/ipv4/tcp_mem")
    assert proc.ints("sys/net/ipv4/tcp_mem", 3) == [287901, 383868, 575802]
    assert proc.ints("sys/net/ipv4/ip_local_port_range", 2) == [32768, 60999]
    assert proc.ints("sys/net/ipv4/tcp_rmem", 3) == [4096, 131072, 33554432]
    assert proc.ints("sys/fs/file-nr", 3)[2] == 2466177


def test_single_value() -> None:
    proc = Proc(FIXTURE_PROC)
    assert proc.integer("sys/fs/nr_open") == 1048576
    assert proc.integer("sys/net/core/somaxconn") == 4096


def test_meminfo_is_in_bytes() -> None:
    info = Proc(FIXTURE_PROC).meminfo()
    assert info["MemTotal"] == 24684092 * 1024
    assert 0 < info["Slab"] < info["MemTotal"]
    assert info["HugePages_Total"] == 0  # no unit: left as is


def test_sockstat() -> None:
    stat = Proc(FIXTURE_PROC).sockstat()
    assert set(stat["TCP"]) == {"inuse", "orphan", "tw", "alloc", "mem"}
    assert stat["FRAG"] == {"inuse": 0, "memory": 0}


def test_slabinfo() -> None:
    slabs = Proc(FIXTURE_PROC).slabinfo()
    active, total, size, per_slab, pages = slabs["TCP"]
    assert (size, per_slab, pages) == (2368, 13, 8)
    assert 0 <= active <= total


def test_caps_and_softnet() -> None:
    proc = Proc(FIXTURE_PROC)
    assert proc.status_caps("CapEff") == 0x1FFFEFFFFFF
    assert proc.softnet_dropped() == 0xE5


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ProcError, match=r"sys/fs/file-max does not exist"):
        Proc(tmp_path).integer("sys/fs/file-max")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "sys" / "fs" / "file-max").mkdir(parents=True)
    with pytest.raises(ProcError, match="is a directory"):
        Proc(tmp_path).integer("sys/fs/file-max")


@pytest.mark.parametrize("content", ["", "garbage\n", "1 2\n", "12abc\n"])
def test_garbage_content(tmp_path: Path, content: str) -> None:
    write(tmp_path, "sys/fs/file-max", content)
    with pytest.raises(ProcError, match="expected"):
        Proc(tmp_path).integer("sys/fs/file-max")


def test_garbage_structured_files(tmp_path: Path) -> None:
    for rel in ("meminfo", "net/sockstat", "slabinfo", "self/status"):
        write(tmp_path, rel, "nonsense\n")
    proc = Proc(tmp_path)
    for read in (proc.meminfo, proc.sockstat, proc.slabinfo, proc.status_caps):
        with pytest.raises(ProcError):
            read()
