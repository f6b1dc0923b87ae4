"""Per-worker counters in shared memory, for /metrics and /api/stats.

Rules:
- The supervisor maps one anonymous shared region before it forks; each
  worker owns one row and is its only writer, so no lock is needed. A reader
  may see a row half-updated, which for monotonic counters read by Prometheus
  is harmless.
- Workers publish every sweep (0.5 s), not per event: the hot path only bumps
  plain Python ints.
- Any worker answers /metrics for all of them by reading every row.
"""

from __future__ import annotations

import mmap

FIELDS = (
    "pid",
    "started_unix",  # when the worker (re)started, seconds
    "connections",  # open WebSocket connections
    "handshakes_upgraded",
    "handshakes_handed_off",
    "handshakes_adopted",
    "handshakes_http",
    "handshakes_rejected",
    "handshakes_timeout",
    "handshakes_overloaded",
    "handshakes_fd_limit",
    "messages_in",  # send ops accepted from this worker's clients
    "messages_out",  # inbox items written to live connections
    "acks",
    "receipts",  # receipts stored
    "errors",  # error frames sent
    "inbox_items",  # items held in this worker's inboxes
    "bytes_in",
    "bytes_out",
    "slow_consumers",  # connections closed with 4008
    "commits",  # group-commit batches
    "link_packets_out",
    "link_packets_in",
    "rss_bytes",
    "push_sent",  # notifications the push gateway accepted
    "push_failed",  # webhook attempts that failed (each retry counts)
    "push_dropped",  # notifications given up after the retries, or never queued
    "group_skipped",  # group members skipped because their inbox was full
)
_INDEX = {name: i for i, name in enumerate(FIELDS)}
_WIDTH = len(FIELDS)


class SharedStats:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._map = mmap.mmap(-1, workers * _WIDTH * 8)  # MAP_SHARED | MAP_ANONYMOUS
        self._cells = memoryview(self._map).cast("q")

    def write(self, worker: int, values: dict[str, int]) -> None:
        base = worker * _WIDTH
        cells = self._cells
        for name, value in values.items():
            cells[base + _INDEX[name]] = value

    def row(self, worker: int) -> dict[str, int]:
        base = worker * _WIDTH
        return {name: self._cells[base + i] for i, name in enumerate(FIELDS)}

    def rows(self) -> list[dict[str, int]]:
        return [self.row(worker) for worker in range(self.workers)]
