"""What a connection costs where the load generator cannot see: the server and the kernel.

- Server: the RSS of the server process and all of its children (workers),
  summed with psutil, and their CPU time. Growth over a run divided by the
  connections open is the server's user-space bytes per connection.
- Kernel: /proc/meminfo ``Slab`` (socket, inode, file and epoll objects) plus
  /proc/net/sockstat ``mem`` (pages queued in socket buffers). With the load
  generator on the same box its sockets are in there too, so the figure is per
  connection *pair*, which is what a one-box million-connection run pays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class KernelSnapshot:
    slab_bytes: int  # /proc/meminfo Slab
    sock_mem_bytes: int  # /proc/net/sockstat TCP+UDP mem pages, in bytes
    tcp_inuse: int  # TCP sockets in use (any state but TIME_WAIT)

    def growth(self, before: KernelSnapshot) -> int:
        return (self.slab_bytes - before.slab_bytes) + (self.sock_mem_bytes - before.sock_mem_bytes)


def kernel_snapshot() -> KernelSnapshot:
    slab = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                slab = int(line.split()[1]) * 1024
                break
    mem_pages = inuse = 0
    with open("/proc/net/sockstat") as f:
        for line in f:
            fields = line.split()
            if fields[0] in ("TCP:", "UDP:"):
                pairs = dict(zip(fields[1::2], fields[2::2], strict=False))
                mem_pages += int(pairs.get("mem", 0))
                if fields[0] == "TCP:":
                    inuse = int(pairs.get("inuse", 0))
    return KernelSnapshot(slab, mem_pages * PAGE_SIZE, inuse)


class ServerProbe:
    """The server's processes: a root pid (or several) and their children."""

    def __init__(self, pids: list[int]) -> None:
        self.roots = [psutil.Process(pid) for pid in pids]

    def processes(self) -> list[psutil.Process]:
        procs: dict[int, psutil.Process] = {}
        for root in self.roots:
            try:
                procs[root.pid] = root
                for child in root.children(recursive=True):
                    procs[child.pid] = child
            except psutil.NoSuchProcess:
                continue
        return list(procs.values())

    def rss(self) -> int:
        total = 0
        for proc in self.processes():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.processes():
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total

    def count(self) -> int:
        return len(self.processes())


def listener_pids(port: int) -> list[int]:
    """Processes listening on TCP ``port``, roots first: a worker whose parent
    also listens is covered by the parent's children."""
    pids = set()
    for conn in psutil.net_connections(kind="tcp"):
        listening = conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        if listening and conn.pid:
            pids.add(conn.pid)
    roots = []
    for pid in pids:
        try:
            parents = {p.pid for p in psutil.Process(pid).parents()}
        except psutil.NoSuchProcess:
            continue
        if not parents & pids:
            roots.append(pid)
    return sorted(roots)


def own_cpu_s() -> float:
    """CPU seconds of this process (the load generator's parent)."""
    t = psutil.Process().cpu_times()
    return t.user + t.system
