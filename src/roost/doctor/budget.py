"""The memory budget: what one idle connection costs in the kernel and in roost, and how many
fit in this machine's available memory.

Rules:
- The kernel cost is measured on this host, not quoted: open `pairs` idle loopback connections
  (127.0.0.1 only, after `WARMUP_PAIRS` unmeasured ones, in `BATCHES` batches), read
  /proc/meminfo, /proc/net/sockstat and /proc/slabinfo (when readable) before and after, then
  close them all. The measurement is bounded (at most `MAX_PAIRS`
  pairs, and never more descriptors than RLIMIT_NOFILE leaves free), every socket has a
  timeout, and every socket is closed in a `finally`, with an RST so none lingers in
  TIME_WAIT.
- A pair is two sockets: the client end and the server end. Both are the same kernel objects
  (a TCP sock, a socket inode, a file, a dentry, an epoll entry), so a socket costs half a
  pair. roost holds one socket per connection, so `kernel_bytes_per_conn` is the cost of one
  socket; a load generator on the same box adds another socket per connection.
- The measured figure is the growth of Slab in /proc/meminfo: the slab pages the kernel took,
  including the slack of partly used slabs, divided by the sockets opened meanwhile (ours, or
  more if sockstat shows other processes opening TCP sockets at the same time).
- At a million sockets the slabs are full, so a socket costs at least its objects' share of
  slab pages (`object_floor`, from slabinfo). A small measurement can come out below that when
  it reuses free objects left in slabs by others; the floor is used then, and `source` says so.
"""

from __future__ import annotations

import contextlib
import math
import resource
import select
import socket
import statistics
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any

from roost.doctor.limits import PAGE_SIZE, Target, Verdict
from roost.doctor.procfs import Proc, ProcError

ROOST_BYTES_PER_CONN_DEFAULT = 301
"""User-space bytes per idle authenticated connection, from BENCHMARKS.md: RSS growth of all
roost processes / connections at 100,000 connections on 8 workers (`roost bench idle
--workers 8 --connections 100000 --warmup 4000`). Override it with `--roost-bytes`."""

KERNEL_BYTES_PER_SOCKET_DEFAULT = 5000
"""Used with --no-measure or when the measurement fails: NOTES.md measured Slab growth of
~10 KB per idle loopback pair (two sockets) at 204,000 pairs on this machine kind."""

WORKER_BASE_BYTES_DEFAULT = 43 * 2**20
"""RSS of one worker process before its first connection, from BENCHMARKS.md: a supervisor
and 8 workers held 390 MB (43 MiB each) after start-up and a warm-up. Forked workers share
part of it copy-on-write, so the sum of RSS, counted here, is an upper bound."""

MEMORY_HEADROOM = 0.8
"""Warn above this share of MemAvailable: the rest is for buffers under load (tcp_mem),
page cache for the SQLite inboxes, and the processes that are not roost."""

DEFAULT_PAIRS = 2000
MAX_PAIRS = 8000
WARMUP_PAIRS = 2000
"""Pairs opened before the baseline and not measured. The first sockets fill free objects in
slabs the kernel already holds, so they look cheaper than the millionth one, which needs
fresh slab pages; measured here: ~3.9 KB per socket cold, ~4.2 KB after a warm-up, ~4.5 KB
per socket at 96,000 pairs."""
BATCHES = 4
"""The measured pairs are opened in batches and the median batch is kept, so that one burst
of slab activity from another process on a shared machine does not skew the figure."""
FD_HEADROOM = 64  # descriptors left free for this process besides the measured sockets
TIMEOUT_SECONDS = 5.0  # per socket operation
DEADLINE_SECONDS = 60.0  # for the whole measurement

SOCKET_CACHES = (
    "TCP",  # struct tcp_sock
    "sock_inode_cache",  # struct socket + its inode
    "filp",  # struct file
    "dentry",  # the socket's pseudo-filesystem dentry
    "eventpoll_epi",  # one epoll registration
    "ep_head",  # the list head of a file that is in an epoll set
    "lsm_inode_cache",  # security blobs, on kernels with an LSM
    "lsm_file_cache",
)
"""Slab caches that every open, epoll-registered TCP socket holds one object of."""

# The sockets exchange a handshake-sized request and response, so that they are in the state
# of an idle WebSocket connection after its upgrade: data has flowed, queues are empty.
REQUEST = b"GET /doctor HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\r\n"
RESPONSE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"


class MeasureError(Exception):
    """The measurement could not run; the budget falls back to the default."""


@dataclass(frozen=True, slots=True)
class SocketCost:
    """What `pairs` idle loopback connections cost the kernel. Per-socket figures are bytes."""

    pairs: int  # connections measured; each is two sockets
    warmup_pairs: int  # opened first and not measured, to use up partly free slabs
    sockets: int  # 2 * pairs
    tcp_inuse_delta: int  # sockstat TCP inuse growth: should equal `sockets`
    tcp_mem_pages_delta: int  # sockstat TCP mem growth: ~0, idle sockets hold no buffers
    slab_bytes_per_socket: int  # meminfo Slab growth / sockets: median over the batches
    batch_bytes_per_socket: list[int]  # the same, per batch: their spread shows the noise
    unreclaimable_bytes_per_socket: int  # meminfo SUnreclaim growth / sockets
    slabinfo_bytes_per_socket: int | None  # growth of all slab objects / sockets, if readable
    slabinfo_caches: dict[str, int]  # the largest growths per cache, bytes per socket
    object_floor: int | None  # slab share of the SOCKET_CACHES objects: no socket costs less
    kernel_bytes_per_socket: int  # the figure the budget uses
    source: str  # where kernel_bytes_per_socket came from

    @property
    def kernel_bytes_per_pair(self) -> int:
        return 2 * self.kernel_bytes_per_socket

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kernel_bytes_per_pair"] = self.kernel_bytes_per_pair
        return out


def _bounded_pairs(pairs: int, warmup: int) -> tuple[int, int]:
    """Clamp (pairs, warmup) to `MAX_PAIRS` and to what RLIMIT_NOFILE leaves free; the
    warm-up gives way first."""
    if pairs < 1:
        raise MeasureError(f"pairs must be at least 1, not {pairs}")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 2 * (MAX_PAIRS + WARMUP_PAIRS) + FD_HEADROOM
    room = (soft - FD_HEADROOM) // 2
    if room < 1:
        raise MeasureError(f"RLIMIT_NOFILE {soft} leaves no room for test sockets")
    pairs = min(pairs, MAX_PAIRS, room)
    return pairs, max(0, min(warmup, room - pairs))


def _batches(pairs: int) -> list[int]:
    """Split `pairs` into up to `BATCHES` near-equal batches."""
    count = min(BATCHES, pairs)
    return [pairs // count + (1 if i < pairs % count else 0) for i in range(count)]


def _recv_exact(sock: socket.socket, size: int) -> None:
    got = 0
    while got < size:
        chunk = sock.recv(size - got)
        if not chunk:
            raise MeasureError("loopback peer closed during the measurement")
        got += len(chunk)


def _close_all(held: list[socket.socket]) -> None:
    """Close clients with an RST (SO_LINGER 0) first, so no socket is left in TIME_WAIT or
    FIN_WAIT, then the server ends, which the RST has already moved to CLOSE."""
    rst = struct.pack("ii", 1, 0)
    for i, sock in enumerate(held):
        if i % 2 == 0:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, rst)
            sock.close()
    for sock in held[1::2]:
        sock.close()


SlabInfo = dict[str, tuple[int, int, int, int, int]]


def _slabinfo(proc: Proc) -> SlabInfo | None:
    try:
        return proc.slabinfo()
    except ProcError:
        return None  # root only; the measurement works without it


def object_floor(slabinfo: SlabInfo, page_size: int = PAGE_SIZE) -> int | None:
    """Bytes one epoll-registered TCP socket costs once its slabs are full: for each cache in
    `SOCKET_CACHES`, its share of a slab (pagesperslab x page / objperslab), which counts
    the unused tail of each slab as well as the object. A million sockets fill their slabs,
    so no socket costs less at scale, whatever free objects a small measurement reuses."""
    if "TCP" not in slabinfo:
        return None
    total = 0.0
    for name in SOCKET_CACHES:
        if name in slabinfo:
            _, _, size, per_slab, pages = slabinfo[name]
            total += pages * page_size / per_slab if per_slab else size
    return round(total)


def measure_socket_cost(
    pairs: int = DEFAULT_PAIRS,
    proc: Proc | None = None,
    *,
    warmup: int = WARMUP_PAIRS,
    address: str = "127.0.0.1",
) -> SocketCost:
    """Open `warmup` + `pairs` idle loopback connections, measure, close them all.

    Raises MeasureError, with every socket closed, when /proc/meminfo or sockstat cannot be
    read or a socket operation fails."""
    proc = proc or Proc()
    pairs, warmup = _bounded_pairs(pairs, warmup)
    sockets = 2 * pairs
    deadline = time.monotonic() + DEADLINE_SECONDS
    held: list[socket.socket] = []  # client, server, client, server, ...
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server_ep = select.epoll()  # a roost worker's connection table
    client_ep = select.epoll()  # a load generator's

    def open_pairs(count: int) -> None:
        for _ in range(count):
            if time.monotonic() > deadline:
                raise MeasureError(f"opening pairs took over {DEADLINE_SECONDS:g} s")
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(client)
            client.settimeout(TIMEOUT_SECONDS)
            client.connect(where)
            server, _ = listener.accept()
            held.append(server)
            server.settimeout(TIMEOUT_SECONDS)
            client.sendall(REQUEST)
            _recv_exact(server, len(REQUEST))
            server.sendall(RESPONSE)
            _recv_exact(client, len(RESPONSE))
            server_ep.register(server.fileno(), select.EPOLLIN)
            client_ep.register(client.fileno(), select.EPOLLIN)

    batch_costs: list[float] = []
    try:
        listener.bind((address, 0))
        listener.listen(128)
        listener.settimeout(TIMEOUT_SECONDS)
        where = listener.getsockname()
        open_pairs(warmup)
        mem0, sock0, slab0 = proc.meminfo(), proc.sockstat(), _slabinfo(proc)
        before = (mem0["Slab"], sock0["TCP"].get("alloc", 0))
        for size in _batches(pairs):
            open_pairs(size)
            after = (proc.meminfo()["Slab"], proc.sockstat()["TCP"].get("alloc", 0))
            # Sockets other processes opened meanwhile grew Slab too: divide by them as well.
            batch_costs.append((after[0] - before[0]) / max(2 * size, after[1] - before[1]))
            before = after
        mem1, sock1, slab1 = proc.meminfo(), proc.sockstat(), _slabinfo(proc)
    except (OSError, ProcError, KeyError) as exc:
        raise MeasureError(f"measurement failed: {exc!r}") from exc
    finally:
        _close_all(held)
        listener.close()
        server_ep.close()
        client_ep.close()

    def per_socket(key: str) -> int:
        return round((mem1.get(key, 0) - mem0.get(key, 0)) / sockets)

    slab = round(statistics.median(batch_costs))
    caches: dict[str, int] = {}
    slabinfo_total: int | None = None
    floor: int | None = None
    if slab0 is not None and slab1 is not None:
        growth = {
            name: (now[0] - slab0[name][0] if name in slab0 else now[0]) * now[2]
            for name, now in slab1.items()
        }
        slabinfo_total = round(sum(growth.values()) / sockets)
        top = sorted((g, name) for name, g in growth.items() if g > 0)[::-1][:12]
        caches = {name: round(g / sockets) for g, name in top}
        floor = object_floor(slab1)
    if floor is not None and slab < floor:
        chosen, source = (
            floor,
            (
                f"slab floor: Slab grew {slab:,} B per socket over {pairs:,} pairs, below the slab "
                "share of a socket's objects (free objects were reused)"
            ),
        )
    elif slab > 0:
        chosen, source = slab, f"measured: Slab growth over {pairs:,} loopback pairs"
    else:
        chosen, source = KERNEL_BYTES_PER_SOCKET_DEFAULT, "default (Slab growth not positive)"
    return SocketCost(
        pairs=pairs,
        warmup_pairs=warmup,
        sockets=sockets,
        tcp_inuse_delta=sock1["TCP"].get("inuse", 0) - sock0["TCP"].get("inuse", 0),
        tcp_mem_pages_delta=sock1["TCP"].get("mem", 0) - sock0["TCP"].get("mem", 0),
        slab_bytes_per_socket=slab,
        batch_bytes_per_socket=[round(c) for c in batch_costs],
        unreclaimable_bytes_per_socket=per_socket("SUnreclaim"),
        slabinfo_bytes_per_socket=slabinfo_total,
        slabinfo_caches=caches,
        object_floor=floor,
        kernel_bytes_per_socket=chosen,
        source=source,
    )


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """Memory for N idle connections against MemAvailable. All figures are bytes."""

    connections: int
    workers: int
    kernel_bytes_per_conn: int  # one server-side socket
    roost_bytes_per_conn: int  # user space, per connection
    client_bytes_per_conn: int  # kernel cost of a local load generator's socket, else 0
    worker_base_bytes: int  # per worker process, before connections
    needed_bytes: int
    available_bytes: int | None  # MemAvailable
    max_connections: int | None  # the largest N that fits in available_bytes
    verdict: Verdict
    source: str  # where kernel_bytes_per_conn came from
    reason: str
    measurement: SocketCost | None

    @property
    def kernel_bytes_per_pair(self) -> int:
        return 2 * self.kernel_bytes_per_conn

    @property
    def bytes_per_conn(self) -> int:
        return self.kernel_bytes_per_conn + self.roost_bytes_per_conn + self.client_bytes_per_conn

    def as_dict(self) -> dict[str, Any]:
        return {
            "kernel_bytes_per_conn": self.kernel_bytes_per_conn,
            "roost_bytes_per_conn": self.roost_bytes_per_conn,
            "needed_bytes": self.needed_bytes,
            "available_bytes": self.available_bytes,
            "max_connections": self.max_connections,
            "kernel_bytes_per_pair": self.kernel_bytes_per_pair,
            "client_bytes_per_conn": self.client_bytes_per_conn,
            "bytes_per_conn": self.bytes_per_conn,
            "worker_base_bytes": self.worker_base_bytes,
            "verdict": self.verdict,
            "source": self.source,
            "reason": self.reason,
            "measurement": self.measurement.as_dict() if self.measurement else None,
        }


def memory_budget(
    target: Target,
    *,
    kernel_bytes_per_socket: int,
    source: str,
    roost_bytes_per_conn: int = ROOST_BYTES_PER_CONN_DEFAULT,
    worker_base_bytes: int = WORKER_BASE_BYTES_DEFAULT,
    proc: Proc | None = None,
    measurement: SocketCost | None = None,
) -> MemoryBudget:
    """needed = N x (kernel + roost [+ kernel of the local client socket]) + W x worker base.

    max_connections = (MemAvailable - W x worker base) // per-connection cost. Kernel memory
    of idle sockets is slab that cannot be reclaimed while they are open, so it competes with
    user space for MemAvailable one for one."""
    proc = proc or Proc()
    client = kernel_bytes_per_socket if target.local_loadgen else 0
    per_conn = kernel_bytes_per_socket + roost_bytes_per_conn + client
    fixed = target.workers * worker_base_bytes
    needed = target.connections * per_conn + fixed
    try:
        available: int | None = proc.meminfo().get("MemAvailable")
    except ProcError as err:
        available, why = None, err.reason
    else:
        why = "" if available is not None else "meminfo has no MemAvailable line"
    workers_text = f"{target.workers} workers x {worker_base_bytes / 2**20:.0f} MiB"
    formula = (
        f"{target.connections:,} x ({kernel_bytes_per_socket:,} kernel + "
        f"{roost_bytes_per_conn:,} roost"
        + (f" + {client:,} local client socket" if client else "")
        + f") + {workers_text}"
    )
    if available is None:
        return MemoryBudget(
            target.connections,
            target.workers,
            kernel_bytes_per_socket,
            roost_bytes_per_conn,
            client,
            worker_base_bytes,
            needed,
            None,
            None,
            "unknown",
            source,
            f"{formula}; MemAvailable unknown: {why}",
            measurement,
        )
    max_conns = max(0, (available - fixed) // per_conn)
    if needed > available:
        verdict: Verdict = "fail"
    elif needed > MEMORY_HEADROOM * available:
        verdict = "warn"
    else:
        verdict = "ok"
    share = math.floor(100 * needed / available) if available else 100
    return MemoryBudget(
        target.connections,
        target.workers,
        kernel_bytes_per_socket,
        roost_bytes_per_conn,
        client,
        worker_base_bytes,
        needed,
        available,
        max_conns,
        verdict,
        source,
        f"{formula} = {share}% of MemAvailable (warn above {MEMORY_HEADROOM:.0%})",
        measurement,
    )
