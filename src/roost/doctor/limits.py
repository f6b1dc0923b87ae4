"""Every kernel and process limit that caps concurrent connections or their memory.

Rules:
- One `check_*` function per limit. It reads the current value, computes the value needed
  for `Target` (N connections on W workers), and returns one `Limit` record: current, needed,
  verdict, the symptom a user sees when the limit is hit, the exact fix, and whether this
  process could raise it.
- A reader that fails (missing file, a directory instead of a file, garbage content) gives
  verdict "unknown" with the reason. No check raises.
- The needed-value formulas are the `need_*` functions below; each docstring says why.
  They are pure arithmetic, shared by `roost doctor` and the `roost serve` preflight.
- Verdicts: "fail" when the limit stops N connections outright; "warn" when it only bites
  under load (bursts, mass closes, fan-out) or can be raised by roost itself; "ok" otherwise.
- Nothing here opens sockets or measures; `budget.py` does that.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from roost.doctor.procfs import DEFAULT_ROOT, Proc, ProcError

Verdict = Literal["ok", "warn", "fail", "unknown"]
Value = int | list[int] | str | None

PAGE_SIZE = 4096
"""tcp_mem counts pages; x86_64 pages are 4 KiB (`resource.getpagesize()` agrees here)."""

CAP_SYS_RESOURCE = 24
"""Bit of CapEff that lets a process raise its hard RLIMIT_NOFILE (linux/capability.h)."""

FD_SLACK_BASE = 64
"""File descriptors a worker holds besides its connections: stdio (3), the listening socket,
the connection epoll and the asyncio loop's own epoll and self-pipe, the SQLite inbox with its
journal/WAL/shm files, the HTTP API socket, log files, a few handshakes in flight. Rounded up."""

IMBALANCE_SIGMAS = 4
"""Connections do not split evenly over workers: SO_REUSEPORT hashes the 4-tuple and the
owner worker is a hash of the user id, so one worker's count is Binomial(N, 1/W). The busiest
of W workers sits a few standard deviations above the mean; 4 sigma covers it for any W a
machine runs (the chance that any worker exceeds it is below W * 3e-5)."""

RECONNECT_STORM_SECONDS = 10.0
"""The window over which all N clients come back after a deploy or a worker restart. roost
tells clients to reconnect with jitter; 10 s is the spread assumed for queue sizing."""

ACCEPT_STALL_SECONDS = 0.1
"""How long a worker may go without calling accept(): one loop turn holding a SQLite group
commit, a GC pass or a large fan-out. Connections arriving meanwhile wait in the accept queue."""

SOFTIRQ_DELAY_SECONDS = 0.01
"""How long packets may wait in a CPU's input backlog before NET_RX softirq drains it when
the CPU is busy (ksoftirqd runs at normal priority: about one scheduler tick at HZ=100)."""

PACKETS_PER_CONNECT = 3
"""Inbound packets of a new connection before it goes idle: SYN, the handshake ACK, and the
WebSocket upgrade request (one segment)."""

ACCEPT_BACKLOG_FLOOR = 4096
"""Never recommend less than the kernel's own default somaxconn since Linux 5.4."""

NETDEV_BACKLOG_FLOOR = 1000
"""The kernel default netdev_max_backlog."""


@dataclass(frozen=True, slots=True)
class Target:
    """What the machine is being checked for."""

    connections: int  # N: concurrent server-side connections
    workers: int  # W: roost worker processes sharing them
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    local_loadgen: bool = False  # the load generator's client sockets live on this box too

    @property
    def sockets(self) -> int:
        """Sockets on this box: one per connection, two when the clients are local too."""
        return self.connections * (2 if self.local_loadgen else 1)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit's verdict. `as_dict` is the JSON shape of `roost doctor --json`."""

    name: str  # sysctl name, or "RLIMIT_NOFILE soft" / "RLIMIT_NOFILE hard"
    current: Value  # as the kernel reports it; None when unreadable or absent
    needed: Value  # for the target; None when the target sets no requirement
    verdict: Verdict
    symptom: str  # what the user sees when the limit is hit
    fix: str  # the exact command or config line; "" when nothing is needed
    raisable: bool  # can this process raise it (root for sysctls, CAP_SYS_RESOURCE for hard)
    reason: str = ""  # why this verdict; for "unknown", why the value could not be read
    sysctl: tuple[str, str] | None = None  # (key, value) recommended in a sysctl.d file

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "current": self.current,
            "needed": self.needed,
            "verdict": self.verdict,
            "symptom": self.symptom,
            "fix": self.fix,
            "raisable": self.raisable,
            "reason": self.reason,
            "recommended": self.sysctl[1] if self.sysctl else None,
        }


def _can_write(path: Path) -> bool:
    return os.access(path, os.W_OK)


class Host:
    """Where values come from; tests swap the proc root, getrlimit and capabilities."""

    def __init__(
        self,
        proc_root: str | Path = DEFAULT_ROOT,
        *,
        getrlimit: Callable[[int], tuple[int, int]] | None = None,
        can_write: Callable[[Path], bool] = _can_write,
        cap_sys_resource: bool | None = None,
    ) -> None:
        self.proc = Proc(proc_root)
        self.getrlimit = getrlimit or resource.getrlimit
        self.can_write = can_write
        self._cap_sys_resource = cap_sys_resource

    def cap_sys_resource(self) -> bool | None:
        """None when self/status cannot be read."""
        if self._cap_sys_resource is not None:
            return self._cap_sys_resource
        try:
            return bool(self.proc.status_caps("CapEff") >> CAP_SYS_RESOURCE & 1)
        except ProcError:
            return None

    def sysctl_writable(self, name: str) -> bool:
        return self.can_write(self.proc.path(sysctl_path(name)))


def sysctl_path(name: str) -> str:
    """ "net.ipv4.tcp_mem" -> "sys/net/ipv4/tcp_mem" (relative to the proc root)."""
    return "sys/" + name.replace(".", "/")


# -- needed values ---------------------------------------------------------------------------


def worker_fd_slack(workers: int) -> int:
    """Descriptors per worker that are not connections: `FD_SLACK_BASE`, plus one channel to
    each other worker and one to the supervisor, since messages and handed-off connections
    travel over a Unix socket per peer (W - 1 + 1 = W)."""
    return FD_SLACK_BASE + workers


def need_fds_per_worker(connections: int, workers: int) -> int:
    """RLIMIT_NOFILE each worker needs: its share ceil(N/W), plus the imbalance of hashing N
    connections over W workers (`IMBALANCE_SIGMAS` standard deviations of Binomial(N, 1/W)),
    plus `worker_fd_slack`. RLIMIT_NOFILE is per process, so this is per worker, not total."""
    share = math.ceil(connections / workers)
    sigma = math.sqrt(connections * (1 / workers) * (1 - 1 / workers))
    return share + math.ceil(IMBALANCE_SIGMAS * sigma) + worker_fd_slack(workers)


def min_workers(connections: int, fd_limit: int) -> int | None:
    """The fewest workers whose busiest one stays within `fd_limit` descriptors, or None when
    no worker count does (the slack grows with W, so the need per worker bottoms out)."""
    for workers in range(1, max(2, 2 * math.isqrt(connections) + 2)):
        if need_fds_per_worker(connections, workers) <= fd_limit:
            return workers
    return None


def need_files(target: Target, in_use: int) -> int:
    """fs.file-max counts open file objects on the whole machine: one per socket (two per
    connection with local clients), the slack of every worker (and of as many load-generator
    processes), plus what everything else on the box holds now (`in_use`, from file-nr)."""
    procs = target.workers * (2 if target.local_loadgen else 1)
    return target.sockets + procs * worker_fd_slack(target.workers) + in_use


def need_epoll_watches(target: Target) -> int:
    """fs.epoll.max_user_watches counts registrations of one user across all its processes:
    every connection socket is registered once, plus per worker the listener, the worker links
    and the loop's own fds. A local load generator running as the same user doubles it."""
    return target.sockets + target.workers * (target.workers + 8)


def need_accept_backlog(target: Target) -> int:
    """Accept-queue length per listening socket (each worker has its own with SO_REUSEPORT).
    A reconnect storm brings N connections in `RECONNECT_STORM_SECONDS`; while one worker stalls
    for `ACCEPT_STALL_SECONDS`, its 1/W share of arrivals waits in its queue. Never below
    `ACCEPT_BACKLOG_FLOOR`."""
    arrivals = target.connections / RECONNECT_STORM_SECONDS * ACCEPT_STALL_SECONDS
    return max(ACCEPT_BACKLOG_FLOOR, math.ceil(arrivals / target.workers))


def need_netdev_backlog(target: Target) -> int:
    """Per-CPU input queue for packets that enter through netif_rx: loopback, veth (containers)
    and NICs steered with RPS. During a reconnect storm, `PACKETS_PER_CONNECT` packets per
    connection arrive at N / `RECONNECT_STORM_SECONDS` connections per second, spread over the
    CPUs, and wait up to `SOFTIRQ_DELAY_SECONDS` for the softirq. Never below the default."""
    rate = target.connections / RECONNECT_STORM_SECONDS * PACKETS_PER_CONNECT / target.cpus
    return max(NETDEV_BACKLOG_FLOOR, math.ceil(rate * SOFTIRQ_DELAY_SECONDS))


def need_tcp_mem_pages(target: Target) -> int:
    """tcp_mem caps *buffered* memory, in pages, not sockets: an idle socket with empty queues
    is charged nothing (sockstat `mem` stays flat while idle connections pile up). A socket that
    holds any queued data is charged at least one page (SK_MEM_QUANTUM). The worst case that
    must stay below the hard limit tcp_mem[2] is a fan-out that queues a frame to every
    connection at once: one page per socket that holds data (both ends with local clients)."""
    return target.sockets


def need_source_addresses(connections: int, ports: int, destinations: int = 1) -> int:
    """A client picks an ephemeral port per (source address, destination address:port); with
    IP_BIND_ADDRESS_NO_PORT the same port is reused across destinations. All workers share one
    destination (SO_REUSEPORT), so N connections need ceil(N / ports) source addresses."""
    return math.ceil(connections / (ports * destinations))


# -- records ---------------------------------------------------------------------------------


def _unknown(name: str, needed: Value, err: ProcError, symptom: str, fix: str) -> Limit:
    return Limit(
        name=name,
        current=None,
        needed=needed,
        verdict="unknown",
        symptom=symptom,
        fix=fix,
        raisable=False,
        reason=f"could not read it: {err.reason}",
    )


def _fmt(value: int | list[int]) -> str:
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def _sysctl_fix(name: str, value: int | list[int]) -> str:
    text = _fmt(value)
    return f'sysctl -w {name}="{text}"' if isinstance(value, list) else f"sysctl -w {name}={text}"


def _at_least(
    host: Host,
    name: str,
    needed: int,
    *,
    short: Verdict,
    symptom: str,
    reason: str,
    fix_extra: str = "",
) -> Limit:
    """A single-integer sysctl that must be >= needed."""
    try:
        current = host.proc.integer(sysctl_path(name))
    except ProcError as err:
        return _unknown(name, needed, err, symptom, _sysctl_fix(name, needed) + " (if lower)")
    ok = current >= needed
    fix = "" if ok else _sysctl_fix(name, needed) + fix_extra
    return Limit(
        name=name,
        current=current,
        needed=needed,
        verdict="ok" if ok else short,
        symptom=symptom,
        fix=fix,
        raisable=host.sysctl_writable(name),
        reason=reason,
        sysctl=None if ok else (name, str(needed)),
    )


def check_nofile(host: Host, target: Target) -> list[Limit]:
    """RLIMIT_NOFILE, soft and hard, per worker process.

    accept() fails with EMFILE once a process holds its soft limit of descriptors. Any process
    may raise its soft limit up to the hard limit; raising the hard limit needs
    CAP_SYS_RESOURCE, and never goes above fs.nr_open. Without that capability the ways out
    are more workers or a supervisor that starts roost with a higher limit (systemd
    LimitNOFILE, limits.conf)."""
    n, w = target.connections, target.workers
    need = need_fds_per_worker(n, w)
    symptom = (
        'EMFILE "Too many open files" from accept(): the worker stops taking connections '
        "(and a level-triggered listener spins)"
    )
    try:
        soft, hard = host.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError) as exc:
        err = ProcError(f"getrlimit(RLIMIT_NOFILE) failed: {exc}")
        return [
            _unknown("RLIMIT_NOFILE soft", need, err, symptom, f"ulimit -n {need}"),
            _unknown("RLIMIT_NOFILE hard", need, err, symptom, f"LimitNOFILE={need}"),
        ]
    soft_v = math.inf if soft == resource.RLIM_INFINITY else soft
    hard_v = math.inf if hard == resource.RLIM_INFINITY else hard
    cap = host.cap_sys_resource()
    try:
        nr_open: int | None = host.proc.integer(sysctl_path("fs.nr_open"))
    except ProcError:
        nr_open = None
    above_ceiling = nr_open is not None and need > nr_open
    hard_raisable = bool(cap) and not above_ceiling
    share = (
        f"{n:,} connections over {w} workers: the busiest worker needs {need:,} descriptors "
        f"({w} x {need:,} = {w * need:,} in all)"
    )
    cap_text = {
        True: "this process has CAP_SYS_RESOURCE and may raise the hard limit",
        False: "this process lacks CAP_SYS_RESOURCE: setrlimit() and `ulimit -Hn` cannot raise "
        "the hard limit",
        None: "whether this process may raise the hard limit is unknown (self/status unreadable)",
    }[cap]

    k = min_workers(n, int(min(hard_v, 2**62)))
    ways = []
    if k is not None:
        ways.append(f"--workers {k} (then each needs {need_fds_per_worker(n, k):,} <= {hard:,})")
    ceiling = " after raising fs.nr_open" if above_ceiling else ""
    ways.append(f"LimitNOFILE={need} in the systemd unit (roost doctor --systemd){ceiling}")
    ways.append(f"'<user> - nofile {need}' in /etc/security/limits.conf")
    hard_fix = "; or ".join(ways)

    records = []
    if soft_v >= need:
        records.append(Limit("RLIMIT_NOFILE soft", soft, need, "ok", symptom, "", True, share))
    elif hard_v >= need:
        records.append(
            Limit(
                "RLIMIT_NOFILE soft",
                soft,
                need,
                "warn",
                symptom,
                f"ulimit -n {need} before roost serve (any process may raise its soft limit "
                "up to the hard limit)",
                True,
                f"{share}; the hard limit {hard:,} allows it",
            )
        )
    else:
        records.append(
            Limit(
                "RLIMIT_NOFILE soft",
                soft,
                need,
                "fail",
                symptom,
                hard_fix,
                hard_raisable,
                f"{share}; the hard limit {hard:,} is below that too",
            )
        )
    if hard_v >= need:
        records.append(Limit("RLIMIT_NOFILE hard", hard, need, "ok", symptom, "", bool(cap), share))
    else:
        records.append(
            Limit(
                "RLIMIT_NOFILE hard",
                hard,
                need,
                "fail",
                symptom,
                hard_fix,
                hard_raisable,
                f"{share}; {cap_text}",
            )
        )
    return records


def check_nr_open(host: Host, target: Target) -> Limit:
    """fs.nr_open: the ceiling for any process's RLIMIT_NOFILE, hard limit included. It must
    allow the per-worker need, or neither setrlimit() nor systemd can grant it."""
    need = need_fds_per_worker(target.connections, target.workers)
    return _at_least(
        host,
        "fs.nr_open",
        need,
        short="fail",
        symptom='setrlimit()/ulimit -n above it: EPERM "Operation not permitted"; '
        "systemd cannot apply a larger LimitNOFILE",
        reason="ceiling of RLIMIT_NOFILE for every process; needed = the busiest worker's share",
    )


def check_file_max(host: Host, target: Target) -> Limit:
    """fs.file-max: open files on the whole machine (`need_files`)."""
    try:
        in_use = host.proc.ints("sys/fs/file-nr", 3)[0]
    except ProcError:
        in_use = 0
    need = need_files(target, in_use)
    limit = _at_least(
        host,
        "fs.file-max",
        need,
        short="fail",
        symptom='ENFILE "Too many open files in system" from accept() and open(); '
        'kernel log "VFS: file-max limit N reached"',
        reason=f"one file per socket ({target.sockets:,}), worker slack, and {in_use:,} files "
        "open now on this machine; processes with CAP_SYS_ADMIN are exempt",
    )
    return limit


def check_epoll_watches(host: Host, target: Target) -> Limit:
    """fs.epoll.max_user_watches (`need_epoll_watches`)."""
    return _at_least(
        host,
        "fs.epoll.max_user_watches",
        need_epoll_watches(target),
        short="fail",
        symptom='epoll_ctl(): ENOSPC "No space left on device": a new connection cannot be '
        "registered with the worker's epoll",
        reason="per user, across all its processes: one watch per socket"
        + (" (server and local clients)" if target.local_loadgen else ""),
    )


def check_somaxconn(host: Host, target: Target) -> Limit:
    """net.core.somaxconn silently caps the backlog roost passes to listen()."""
    need = need_accept_backlog(target)
    return _at_least(
        host,
        "net.core.somaxconn",
        need,
        short="warn",
        symptom="accept queue full: SYNs are dropped (ListenOverflows in /proc/net/netstat); "
        "clients stall on SYN retransmits (1 s, 3 s, 7 s) during a reconnect storm",
        reason=f"per listening socket (one per worker): a reconnect storm of N in "
        f"{RECONNECT_STORM_SECONDS:g} s while a worker stalls {ACCEPT_STALL_SECONDS:g} s",
    )


def check_syn_backlog(host: Host, target: Target) -> Limit:
    """net.ipv4.tcp_max_syn_backlog matters only when SYN cookies are off.

    With tcp_syncookies = 1 (the default) the SYN queue is bounded by the listen backlog and
    overflow is answered with cookies; tcp_max_syn_backlog is consulted only when
    tcp_syncookies = 0, where SYNs are dropped once the queue is 3/4 of it full
    (tcp_conn_request in net/ipv4/tcp_input.c)."""
    name = "net.ipv4.tcp_max_syn_backlog"
    backlog = need_accept_backlog(target)
    try:
        cookies: int | None = host.proc.integer(sysctl_path("net.ipv4.tcp_syncookies"))
    except ProcError:
        cookies = None
    symptom = "SYNs of new connections dropped; clients stall on SYN retransmits (1 s, 3 s)"
    if cookies:
        try:
            current = host.proc.integer(sysctl_path(name))
        except ProcError as err:
            return _unknown(name, None, err, symptom, "")
        return Limit(
            name,
            current,
            None,
            "ok",
            symptom,
            "",
            host.sysctl_writable(name),
            f"tcp_syncookies={cookies}: the listen backlog (somaxconn) bounds the SYN queue and "
            'overflow gets SYN cookies ("Possible SYN flooding on port N. Sending cookies.")',
        )
    return _at_least(
        host,
        name,
        math.ceil(backlog * 4 / 3),
        short="warn",
        symptom=symptom,
        reason="tcp_syncookies is off (or unreadable): SYNs are dropped at 3/4 of this",
    )


def check_netdev_backlog(host: Host, target: Target) -> Limit:
    """net.core.netdev_max_backlog (`need_netdev_backlog`); softnet_stat shows past drops."""
    name = "net.core.netdev_max_backlog"
    reason = (
        "per-CPU queue for loopback, veth and RPS traffic during a reconnect storm "
        f"of N in {RECONNECT_STORM_SECONDS:g} s over {target.cpus} CPUs; a NIC with NAPI "
        "and no RPS bypasses it"
    )
    try:
        dropped = host.proc.softnet_dropped()
    except ProcError:
        dropped = 0
    if dropped:
        reason += f"; softnet_stat already counts {dropped:,} dropped packets"
    return _at_least(
        host,
        name,
        need_netdev_backlog(target),
        short="warn",
        symptom="packets dropped without a message (column 2 of /proc/net/softnet_stat); "
        "connects stall on retransmits",
        reason=reason,
    )


def check_tcp_mem(host: Host, target: Target) -> Limit:
    """net.ipv4.tcp_mem: low, pressure and hard limits of TCP buffer memory, in pages
    (`need_tcp_mem_pages`). Idle connections do not need it; fan-out bursts do, so a shortfall
    is a warning."""
    name = "net.ipv4.tcp_mem"
    need = need_tcp_mem_pages(target)
    symptom = (
        "above tcp_mem[2] the kernel refuses buffer memory: sends stall, received packets are "
        'dropped, kernel log "TCP: out of memory -- consider tuning tcp_mem"'
    )
    try:
        current = host.proc.ints(sysctl_path(name), 3)
    except ProcError as err:
        return _unknown(name, [0, 0, need], err, symptom, f"raise tcp_mem[2] to {need} pages")
    try:
        pages = host.proc.sockstat()["TCP"].get("mem", 0)
        in_use = f"{pages:,} page{'' if pages == 1 else 's'}"
    except ProcError:
        in_use = "unknown"
    reason = (
        f"caps buffered data, not sockets: idle sockets hold no pages (sockstat mem now: "
        f"{in_use}). A fan-out to all {target.sockets:,} sockets charges at least one page each: "
        f"{need:,} pages = {need * PAGE_SIZE / 2**30:.1f} GiB"
    )
    if current[2] >= need:
        return Limit(name, current, current, "ok", symptom, "", host.sysctl_writable(name), reason)
    # Keep the kernel's own proportions between low, pressure and high.
    scale = need / current[2]
    needed = [math.ceil(current[0] * scale), math.ceil(current[1] * scale), need]
    try:
        total = host.proc.meminfo()["MemTotal"]
        if need * PAGE_SIZE > total // 2:
            reason += "; that is over half of RAM: keep fan-out bursts smaller than that instead"
    except ProcError:
        pass
    return Limit(
        name,
        current,
        needed,
        "warn",
        symptom,
        _sysctl_fix(name, needed),
        host.sysctl_writable(name),
        reason,
        (name, _fmt(needed)),
    )


def _check_buffers(host: Host, target: Target, name: str, direction: str) -> Limit:
    """tcp_rmem / tcp_wmem: min, default and max buffer of each socket, in bytes.

    They do not cap the number of connections: memory is charged only for data actually
    queued, and tcp_mem caps the total. Under memory pressure each busy socket keeps `min`, so
    a min above one page multiplies across N sockets; that is the only shortfall reported."""
    symptom = "none for idle connections; under load, buffered data counts against tcp_mem"
    try:
        current = host.proc.ints(sysctl_path(name), 3)
    except ProcError as err:
        return _unknown(name, None, err, symptom, "")
    reason = (
        f"{direction} buffer per socket: min kept under pressure, default at start, max "
        "by autotuning; charged only while data is queued"
    )
    if direction == "send":
        pinned = current[2] * max(1, target.connections // 100)
        reason += (
            f"; a slow consumer can pin up to max = {current[2]:,} B before send() returns "
            f"EAGAIN: 1% of N slow = {pinned / 2**30:.1f} GiB"
        )
    if current[0] <= PAGE_SIZE:
        return Limit(name, current, None, "ok", symptom, "", host.sysctl_writable(name), reason)
    needed = [PAGE_SIZE, current[1], current[2]]
    return Limit(
        name,
        current,
        needed,
        "warn",
        f"under pressure every busy socket keeps min: {target.sockets:,} x {current[0]:,} B "
        'can exceed tcp_mem, "TCP: out of memory -- consider tuning tcp_mem"',
        _sysctl_fix(name, needed),
        host.sysctl_writable(name),
        reason,
        (name, _fmt(needed)),
    )


def check_tcp_rmem(host: Host, target: Target) -> Limit:
    return _check_buffers(host, target, "net.ipv4.tcp_rmem", "receive")


def check_tcp_wmem(host: Host, target: Target) -> Limit:
    return _check_buffers(host, target, "net.ipv4.tcp_wmem", "send")


def _check_buffer_max(host: Host, name: str, opt: str) -> Limit:
    """net.core.rmem_max / wmem_max cap what SO_RCVBUF / SO_SNDBUF may request. roost needs no
    large explicit buffer, so there is no minimum; a larger value lets one socket pin more."""
    symptom = f"setsockopt({opt}) is silently clamped to it"
    try:
        current = host.proc.integer(sysctl_path(name))
    except ProcError as err:
        return _unknown(name, None, err, symptom, "")
    return Limit(
        name,
        current,
        None,
        "ok",
        symptom,
        "",
        host.sysctl_writable(name),
        f"caps explicit {opt} only; does not limit the number of connections",
    )


def check_rmem_max(host: Host, target: Target) -> Limit:
    return _check_buffer_max(host, "net.core.rmem_max", "SO_RCVBUF")


def check_wmem_max(host: Host, target: Target) -> Limit:
    return _check_buffer_max(host, "net.core.wmem_max", "SO_SNDBUF")


def check_orphans(host: Host, target: Target) -> Limit:
    """net.ipv4.tcp_max_orphans: sockets roost has closed while the kernel still sends their
    last data and FIN. A drain (SIGTERM) or restart closes all N at once."""
    return _at_least(
        host,
        "net.ipv4.tcp_max_orphans",
        target.connections,
        short="warn",
        symptom='on a mass close, kernel log "TCP: too many orphaned sockets" and connections '
        "are reset instead of closed: clients see ECONNRESET and may miss the 1001 close frame",
        reason="a drain or restart closes every connection at once; each orphan may also hold "
        "send buffer charged to tcp_mem",
    )


def check_tw_buckets(host: Host, target: Target) -> Limit:
    """net.ipv4.tcp_max_tw_buckets: the side that closes first holds TIME_WAIT, and RFC 6455
    section 7.1.1 has the server close the TCP connection first, so a drain leaves N
    TIME_WAIT sockets on the server (about 256 B each)."""
    return _at_least(
        host,
        "net.ipv4.tcp_max_tw_buckets",
        target.connections,
        short="warn",
        symptom='kernel log "TCP: time wait bucket table overflow"; the extra sockets skip '
        "TIME_WAIT",
        reason="a drain closes all N server-first (RFC 6455 section 7.1.1)",
    )


def check_port_range(host: Host, target: Target) -> Limit:
    """net.ipv4.ip_local_port_range matters only for clients (a load generator) on this box:
    accepted sockets share the listening port and use no ephemeral port
    (`need_source_addresses`)."""
    name = "net.ipv4.ip_local_port_range"
    symptom = 'connect(): EADDRNOTAVAIL "Cannot assign requested address" (on the client)'
    try:
        lo, hi = host.proc.ints(sysctl_path(name), 2)
    except ProcError as err:
        return _unknown(name, None, err, symptom, "")
    ports = hi - lo + 1
    if not target.local_loadgen:
        return Limit(
            name,
            [lo, hi],
            None,
            "ok",
            symptom,
            "",
            host.sysctl_writable(name),
            "a server uses no ephemeral ports; this matters only for a load generator on this "
            "box (--local-loadgen)",
        )
    addrs = need_source_addresses(target.connections, ports)
    reason = (
        f"{ports:,} ports per (source address, destination); {target.connections:,} clients "
        f"to one port need {addrs} source address{'es' if addrs > 1 else ''}"
    )
    if addrs == 1:
        return Limit(
            name,
            [lo, hi],
            "1 source address",
            "ok",
            symptom,
            "",
            host.sysctl_writable(name),
            reason,
        )
    wide = need_source_addresses(target.connections, 65535 - 1024 + 1)
    return Limit(
        name,
        [lo, hi],
        f"{addrs} source addresses",
        "warn",
        f"{symptom} after about {ports:,} connections from one source address",
        f"bind clients to 127.0.0.1..127.0.0.{addrs} with IP_BIND_ADDRESS_NO_PORT before "
        f'connect(); or sysctl -w {name}="1024 65535" and use {wide} addresses',
        host.sysctl_writable(name),
        reason,
        (name, "1024 65535"),
    )


def check_conntrack(host: Host, target: Target) -> Limit:
    """net.netfilter.nf_conntrack_max, when conntrack is loaded: one entry per connection
    (both directions of a flow share it, so local clients add none), plus the flows tracked
    now. Absent entry = conntrack not loaded = nothing to fill."""
    name = "net.netfilter.nf_conntrack_max"
    symptom = 'kernel log "nf_conntrack: table full, dropping packet"; new connections time out'
    if not host.proc.exists(sysctl_path(name)):
        return Limit(
            name,
            None,
            None,
            "ok",
            symptom,
            "",
            False,
            "conntrack is not loaded: no connection-tracking table to fill",
        )
    try:
        count: int | None = host.proc.integer(sysctl_path("net.netfilter.nf_conntrack_count"))
    except ProcError:
        count = None
    need = target.connections + (count or 0)
    exempt = (
        "; or exempt roost's port from tracking: iptables -t raw -I PREROUTING -p tcp "
        "--dport PORT -j NOTRACK"
    )
    limit = _at_least(host, name, need, short="fail", symptom=symptom, reason="", fix_extra=exempt)
    if limit.verdict == "unknown":
        return limit
    reason = f"one entry per tracked connection, plus {count or 0:,} tracked now"
    verdict = limit.verdict
    if verdict == "fail" and count == 0:
        verdict = "warn"
        reason = (
            "conntrack is loaded but tracks nothing now (nf_conntrack_count 0): no firewall rule "
            "uses it. Once one does (stateful firewall, NAT, Docker), each connection takes an "
            "entry and this limit stops new ones"
        )
    return Limit(
        limit.name,
        limit.current,
        limit.needed,
        verdict,
        limit.symptom,
        limit.fix,
        limit.raisable,
        reason,
        limit.sysctl,
    )


SYSCTL_CHECKS: tuple[Callable[[Host, Target], Limit], ...] = (
    check_nr_open,
    check_file_max,
    check_epoll_watches,
    check_somaxconn,
    check_syn_backlog,
    check_netdev_backlog,
    check_tcp_mem,
    check_tcp_rmem,
    check_tcp_wmem,
    check_rmem_max,
    check_wmem_max,
    check_orphans,
    check_tw_buckets,
    check_port_range,
    check_conntrack,
)


def check_limits(target: Target, host: Host | None = None) -> list[Limit]:
    """Every limit, RLIMIT_NOFILE first. Never raises for unreadable /proc entries."""
    host = host or Host()
    records = check_nofile(host, target)
    records.extend(check(host, target) for check in SYSCTL_CHECKS)
    return records
