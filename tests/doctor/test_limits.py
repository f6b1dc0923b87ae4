"""Limit readers, needed values and verdicts, on fixture copies of this machine's /proc."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from roost.doctor import limits as L
from roost.doctor.limits import Host, Limit, Target, check_limits

from .support import write

MILLION = 1_000_000
HostFor = Callable[..., Host]


def by_name(records: list[Limit]) -> dict[str, Limit]:
    return {r.name: r for r in records}


def run(host: Host, n: int = MILLION, w: int = 2, **kw: object) -> dict[str, Limit]:
    return by_name(check_limits(Target(n, w, cpus=2, **kw), host))  # type: ignore[arg-type]


# -- formulas ---------------------------------------------------------------------------------


def test_fds_per_worker_is_share_plus_imbalance_plus_slack() -> None:
    share = math.ceil(MILLION / 60)
    sigma = math.sqrt(MILLION / 60 * (1 - 1 / 60))
    want = share + math.ceil(4 * sigma) + L.FD_SLACK_BASE + 60
    assert L.need_fds_per_worker(MILLION, 60) == want
    # One worker: no imbalance, the whole count.
    assert L.need_fds_per_worker(1000, 1) == 1000 + L.FD_SLACK_BASE + 1


def test_min_workers_is_the_smallest_that_fits() -> None:
    k = L.min_workers(MILLION, 20_000)
    assert k is not None
    assert L.need_fds_per_worker(MILLION, k) <= 20_000 < L.need_fds_per_worker(MILLION, k - 1)
    assert 50 <= k <= 60  # NOTES.md: "about 50+ server worker processes"
    assert L.min_workers(MILLION, 100) is None  # slack alone exceeds it


def test_source_addresses_per_destination() -> None:
    assert L.need_source_addresses(MILLION, 60999 - 32768 + 1) == 36
    assert L.need_source_addresses(28_232, 28_232) == 1


def test_accept_backlog_and_netdev_models() -> None:
    assert L.need_accept_backlog(Target(MILLION, 60)) == L.ACCEPT_BACKLOG_FLOOR
    assert L.need_accept_backlog(Target(MILLION, 2)) == 5000  # 100k/s x 0.1 s / 2
    assert L.need_netdev_backlog(Target(MILLION, 2, cpus=2)) == 1500
    assert L.need_netdev_backlog(Target(MILLION, 2, cpus=64)) == L.NETDEV_BACKLOG_FLOOR


def test_local_loadgen_doubles_sockets() -> None:
    assert Target(10, 1, local_loadgen=True).sockets == 20
    assert L.need_tcp_mem_pages(Target(10, 1, local_loadgen=True)) == 20


# -- this machine, 1M connections ---------------------------------------------------------------


def test_this_machine_two_workers_fails_on_rlimit_only(host_for: HostFor) -> None:
    got = run(host_for())
    failing = {name for name, r in got.items() if r.verdict == "fail"}
    assert failing == {"RLIMIT_NOFILE soft", "RLIMIT_NOFILE hard"}
    hard = got["RLIMIT_NOFILE hard"]
    assert hard.current == 20_000
    assert hard.needed == L.need_fds_per_worker(MILLION, 2)
    assert hard.raisable is False
    assert "CAP_SYS_RESOURCE" in hard.reason
    k = L.min_workers(MILLION, 20_000)
    assert f"--workers {k}" in hard.fix
    assert f"LimitNOFILE={hard.needed}" in hard.fix
    assert "EMFILE" in hard.symptom and "Too many open files" in hard.symptom


def test_this_machine_sixty_workers_has_no_failure(host_for: HostFor) -> None:
    got = run(host_for(), w=60)
    assert not [r for r in got.values() if r.verdict in ("fail", "unknown")]
    assert got["RLIMIT_NOFILE soft"].verdict == "ok"
    warned = {name for name, r in got.items() if r.verdict == "warn"}
    assert warned == {
        "net.core.netdev_max_backlog",
        "net.ipv4.tcp_mem",
        "net.ipv4.tcp_max_orphans",
        "net.ipv4.tcp_max_tw_buckets",
        "net.netfilter.nf_conntrack_max",
    }


def test_tcp_mem_is_pages_of_buffered_data(host_for: HostFor) -> None:
    rec = run(host_for(), w=60)["net.ipv4.tcp_mem"]
    assert rec.current == [287901, 383868, 575802]
    assert rec.verdict == "warn"  # idle sockets hold no pages: never a fail
    assert rec.needed == [math.ceil(287901 * MILLION / 575802), 666667, MILLION]
    assert "idle sockets hold no pages" in rec.reason
    assert "TCP: out of memory -- consider tuning tcp_mem" in rec.symptom
    assert rec.sysctl == ("net.ipv4.tcp_mem", "500000 666667 1000000")
    assert rec.fix == 'sysctl -w net.ipv4.tcp_mem="500000 666667 1000000"'


def test_soft_below_need_but_hard_allows_is_a_raisable_warning(host_for: HostFor) -> None:
    got = run(host_for(rlimit=(1024, 1_048_576)), w=60)
    soft = got["RLIMIT_NOFILE soft"]
    assert (soft.verdict, soft.raisable) == ("warn", True)
    assert "ulimit -n" in soft.fix
    assert got["RLIMIT_NOFILE hard"].verdict == "ok"


def test_hard_limit_raisable_with_cap_sys_resource(host_for: HostFor) -> None:
    hard = run(host_for(cap_sys_resource=True))["RLIMIT_NOFILE hard"]
    assert (hard.verdict, hard.raisable) == ("fail", True)


def test_cap_read_from_self_status(proc_root: Path) -> None:
    host = Host(proc_root, getrlimit=lambda _w: (20_000, 20_000))
    assert host.cap_sys_resource() is False  # CapEff 000001fffeffffff: bit 24 clear
    write(proc_root, "self/status", "CapEff:\t000001ffffffffff\n")
    assert host.cap_sys_resource() is True


def test_nr_open_below_need_fails_and_blocks_raising(host_for: HostFor, proc_root: Path) -> None:
    write(proc_root, "sys/fs/nr_open", "100000\n")
    got = run(host_for(cap_sys_resource=True))
    assert got["fs.nr_open"].verdict == "fail"
    assert got["RLIMIT_NOFILE hard"].raisable is False
    assert "after raising fs.nr_open" in got["RLIMIT_NOFILE hard"].fix


def test_file_max_counts_files_in_use(host_for: HostFor, proc_root: Path) -> None:
    write(proc_root, "sys/fs/file-nr", "500000\t0\t2466177\n")
    rec = run(host_for(), w=60)["fs.file-max"]
    assert rec.needed == MILLION + 60 * L.worker_fd_slack(60) + 500_000
    write(proc_root, "sys/fs/file-max", "1000000\n")
    rec = run(host_for(), w=60)["fs.file-max"]
    assert rec.verdict == "fail" and "ENFILE" in rec.symptom


def test_epoll_watches(host_for: HostFor, proc_root: Path) -> None:
    write(proc_root, "sys/fs/epoll/max_user_watches", "65536\n")
    rec = run(host_for(), w=60)["fs.epoll.max_user_watches"]
    assert rec.verdict == "fail" and "ENOSPC" in rec.symptom
    assert rec.sysctl == (
        "fs.epoll.max_user_watches",
        str(L.need_epoll_watches(Target(MILLION, 60))),
    )


def test_syn_backlog_only_matters_without_syncookies(host_for: HostFor, proc_root: Path) -> None:
    rec = run(host_for(), w=60)["net.ipv4.tcp_max_syn_backlog"]
    assert (rec.verdict, rec.needed) == ("ok", None)
    write(proc_root, "sys/net/ipv4/tcp_syncookies", "0\n")
    rec = run(host_for(), w=60)["net.ipv4.tcp_max_syn_backlog"]
    assert (rec.verdict, rec.needed) == ("warn", math.ceil(4096 * 4 / 3))


def test_somaxconn_short_for_few_workers(host_for: HostFor) -> None:
    rec = run(host_for())["net.core.somaxconn"]
    assert (rec.current, rec.needed, rec.verdict) == (4096, 5000, "warn")


def test_netdev_backlog_mentions_past_drops(host_for: HostFor) -> None:
    rec = run(host_for())["net.core.netdev_max_backlog"]
    assert "229 dropped packets" in rec.reason


def test_buffers_warn_only_on_a_large_minimum(host_for: HostFor, proc_root: Path) -> None:
    got = run(host_for())
    assert got["net.ipv4.tcp_rmem"].verdict == "ok"
    assert got["net.ipv4.tcp_wmem"].verdict == "ok"
    assert got["net.core.wmem_max"].verdict == "ok"
    write(proc_root, "sys/net/ipv4/tcp_wmem", "65536\t65536\t4194304\n")
    rec = run(host_for())["net.ipv4.tcp_wmem"]
    assert rec.verdict == "warn" and rec.needed == [4096, 65536, 4194304]


def test_port_range_only_with_a_local_load_generator(host_for: HostFor) -> None:
    rec = run(host_for(), w=60)["net.ipv4.ip_local_port_range"]
    assert (rec.verdict, rec.current, rec.needed) == ("ok", [32768, 60999], None)
    rec = run(host_for(), w=60, local_loadgen=True)["net.ipv4.ip_local_port_range"]
    assert rec.verdict == "warn"
    assert rec.needed == "36 source addresses"
    assert "EADDRNOTAVAIL" in rec.symptom
    assert "IP_BIND_ADDRESS_NO_PORT" in rec.fix


def test_conntrack_idle_warns_active_fails_absent_is_ok(host_for: HostFor, proc_root: Path) -> None:
    rec = run(host_for(), w=60)["net.netfilter.nf_conntrack_max"]
    assert rec.verdict == "warn" and "tracks nothing" in rec.reason
    assert "nf_conntrack: table full" in rec.symptom
    write(proc_root, "sys/net/netfilter/nf_conntrack_count", "5000\n")
    rec = run(host_for(), w=60)["net.netfilter.nf_conntrack_max"]
    assert (rec.verdict, rec.needed) == ("fail", MILLION + 5000)
    assert "NOTRACK" in rec.fix
    (proc_root / "sys/net/netfilter/nf_conntrack_max").unlink()
    rec = run(host_for(), w=60)["net.netfilter.nf_conntrack_max"]
    assert rec.verdict == "ok" and "not loaded" in rec.reason


# -- unreadable entries -------------------------------------------------------------------------


def test_missing_entry_is_unknown_with_reason(host_for: HostFor, proc_root: Path) -> None:
    (proc_root / "sys/net/core/somaxconn").unlink()
    rec = run(host_for(), w=60)["net.core.somaxconn"]
    assert rec.verdict == "unknown"
    assert rec.current is None
    assert "does not exist" in rec.reason and "somaxconn" in rec.reason
    assert rec.needed == 4096  # still says what is needed


def test_directory_instead_of_file_is_unknown(host_for: HostFor, proc_root: Path) -> None:
    path = proc_root / "sys/net/ipv4/tcp_mem"
    path.unlink()
    path.mkdir()
    rec = run(host_for(), w=60)["net.ipv4.tcp_mem"]
    assert rec.verdict == "unknown" and "is a directory" in rec.reason


@pytest.mark.parametrize(
    "rel,content",
    [
        ("sys/net/ipv4/tcp_mem", "287901 383868\n"),  # two of three numbers
        ("sys/net/ipv4/ip_local_port_range", "32768-60999\n"),
        ("sys/fs/file-max", "lots\n"),
    ],
)
def test_garbage_is_unknown(host_for: HostFor, proc_root: Path, rel: str, content: str) -> None:
    write(proc_root, rel, content)
    name = rel.removeprefix("sys/").replace("/", ".")
    rec = run(host_for(), w=60, local_loadgen=True)[name]
    assert rec.verdict == "unknown" and "expected" in rec.reason


def test_empty_root_never_crashes(host_for: HostFor, tmp_path: Path) -> None:
    got = run(host_for(root=tmp_path / "nothing"), w=60)
    assert got["net.netfilter.nf_conntrack_max"].verdict == "ok"  # not loaded
    assert got["RLIMIT_NOFILE hard"].verdict == "ok"  # from getrlimit, not /proc
    sysctls = [r for n, r in got.items() if not n.startswith(("RLIMIT", "net.netfilter"))]
    assert sysctls and all(r.verdict == "unknown" for r in sysctls)


def test_getrlimit_failure_is_unknown(proc_root: Path) -> None:
    def broken(_which: int) -> tuple[int, int]:
        raise OSError("no")

    got = by_name(check_limits(Target(10, 1), Host(proc_root, getrlimit=broken)))
    assert got["RLIMIT_NOFILE soft"].verdict == "unknown"
    assert got["RLIMIT_NOFILE hard"].verdict == "unknown"


def test_as_dict_has_the_issue_shape(host_for: HostFor) -> None:
    for rec in check_limits(Target(MILLION, 2), host_for()):
        d = rec.as_dict()
        assert {"name", "current", "needed", "verdict", "symptom", "fix", "raisable"} <= set(d)
        assert d["verdict"] in ("ok", "warn", "fail", "unknown")
        assert isinstance(d["raisable"], bool)
