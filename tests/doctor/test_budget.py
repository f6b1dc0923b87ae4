"""The kernel cost measurement, for real on a small count, and the budget arithmetic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from roost.doctor import budget as B
from roost.doctor.limits import Target
from roost.doctor.procfs import Proc

from .support import FIXTURE_PROC


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_measure_small_count_for_real() -> None:
    before = open_fds()
    cost = B.measure_socket_cost(200, warmup=100)
    assert open_fds() == before  # every socket, epoll and listener closed
    assert (cost.pairs, cost.warmup_pairs, cost.sockets) == (200, 100, 400)
    assert len(cost.batch_bytes_per_socket) == B.BATCHES
    assert cost.kernel_bytes_per_socket > 0
    assert cost.kernel_bytes_per_pair == 2 * cost.kernel_bytes_per_socket
    # Other processes share this machine, so only loose consistency: our 400 sockets show up.
    assert cost.tcp_inuse_delta > 0
    if cost.object_floor is not None:  # slabinfo readable (root)
        assert cost.kernel_bytes_per_socket >= cost.object_floor
        assert cost.slabinfo_caches.get("TCP", 0) > 0
    assert cost.source
    d = cost.as_dict()
    assert d["kernel_bytes_per_pair"] == 2 * d["kernel_bytes_per_socket"]


def test_measure_fails_cleanly_without_meminfo(tmp_path: Path) -> None:
    before = open_fds()
    with pytest.raises(B.MeasureError, match="meminfo"):
        B.measure_socket_cost(10, Proc(tmp_path), warmup=5)
    assert open_fds() == before


def test_measure_is_bounded() -> None:
    assert B._bounded_pairs(10**9, 10**9)[0] <= B.MAX_PAIRS
    with pytest.raises(B.MeasureError):
        B._bounded_pairs(0, 0)
    assert B._batches(10) == [3, 3, 2, 2]
    assert B._batches(2) == [1, 1]


def test_object_floor_counts_slab_share() -> None:
    slabs = Proc(FIXTURE_PROC).slabinfo()
    floor = B.object_floor(slabs)
    assert floor is not None
    # TCP alone: 8 pages hold 13 socks of 2368 B, so each takes 2521 B of slab.
    assert floor > round(8 * 4096 / 13) + 832
    assert B.object_floor({}) is None


def test_budget_arithmetic_against_fixture_meminfo() -> None:
    proc = Proc(FIXTURE_PROC)
    available = proc.meminfo()["MemAvailable"]
    target = Target(1_000_000, 60)
    m = B.memory_budget(target, kernel_bytes_per_socket=4000, source="test", proc=proc)
    per_conn = 4000 + B.ROOST_BYTES_PER_CONN_DEFAULT
    fixed = 60 * B.WORKER_BASE_BYTES_DEFAULT
    assert m.needed_bytes == 1_000_000 * per_conn + fixed
    assert m.available_bytes == available
    assert m.max_connections == (available - fixed) // per_conn
    assert m.verdict == "ok"
    assert m.kernel_bytes_per_pair == 8000
    d = m.as_dict()
    for key in (
        "kernel_bytes_per_conn",
        "roost_bytes_per_conn",
        "needed_bytes",
        "available_bytes",
        "max_connections",
    ):
        assert key in d


def test_budget_local_loadgen_adds_the_client_socket() -> None:
    proc = Proc(FIXTURE_PROC)
    m = B.memory_budget(
        Target(1000, 1, local_loadgen=True), kernel_bytes_per_socket=4000, source="t", proc=proc
    )
    assert m.client_bytes_per_conn == 4000
    assert m.bytes_per_conn == 8000 + B.ROOST_BYTES_PER_CONN_DEFAULT


def test_budget_verdicts() -> None:
    proc = Proc(FIXTURE_PROC)
    available = proc.meminfo()["MemAvailable"]

    def verdict(n: int) -> str:
        budget = B.memory_budget(
            Target(n, 1),
            kernel_bytes_per_socket=1000,
            roost_bytes_per_conn=0,
            worker_base_bytes=0,
            source="t",
            proc=proc,
        )
        return budget.verdict

    assert verdict(available // 1000) == "warn"  # fits, but over the headroom
    assert verdict(available // 1000 + 1) == "fail"
    assert verdict(available // 2000) == "ok"


def test_budget_unknown_without_meminfo(tmp_path: Path) -> None:
    m = B.memory_budget(Target(10, 1), kernel_bytes_per_socket=1, source="t", proc=Proc(tmp_path))
    assert (m.verdict, m.available_bytes, m.max_connections) == ("unknown", None, None)
    assert "does not exist" in m.reason
