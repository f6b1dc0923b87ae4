"""Server and kernel memory probes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from roost.bench.meter import ServerProbe, kernel_snapshot, listener_pids


def test_kernel_snapshot_reads_proc() -> None:
    snap = kernel_snapshot()
    assert snap.slab_bytes > 0 and snap.sock_mem_bytes >= 0 and snap.tcp_inuse >= 0
    assert snap.growth(snap) == 0


def test_probe_sums_a_process_and_its_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        alone = ServerProbe([child.pid]).rss()
        both = ServerProbe([os.getpid()])
        assert both.count() >= 2 and both.rss() > alone > 0
        assert both.cpu_s() > 0
    finally:
        child.kill()
        child.wait()


def test_listener_pids_finds_the_listening_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert listener_pids(s.getsockname()[1]) == [os.getpid()]
