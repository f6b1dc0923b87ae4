"""What one load-generator process does in each scenario: idle, relay, storm.

A ``Worker`` owns a slice of the users and drives them through the engine;
the parent (``runner``) only sends it commands and collects its figures.

Rules:
- Every message carries a token unique within its process and the send time:
  ``body = {"k": token, "t": monotonic µs, "p": padding}``. The cid is the
  token in hex, so an ack names its token without a lookup table. Senders and
  recipients live in the same process (a target is a random other user of
  the same worker), so loss, duplicates and latency are computed where the
  data is, on one clock, with nothing shipped between processes.
- loss: tokens acked but never delivered by the end of the drain (relay), or
  acked before the storm and not redelivered after it (storm).
- duplicate: a token delivered twice on one connection, or delivered again
  after this client had confirmed it. A redelivery of an unconfirmed item on
  a new connection is at-least-once delivery working, and is not counted.
- Phases follow the parent's commands: ``ramp`` -> (``ramped``) -> ``go`` ->
  [storm: (``primed``) -> ``storm`` -> (``back``, ``redelivered``)] ->
  ``stop`` -> (``done`` with the figures).
"""

from __future__ import annotations

import gc
import random
import resource
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection

import msgspec

from roost.auth import issue_token
from roost.bench.loadgen import OPEN, Conn, Engine, Target

PROGRESS_EVERY = 0.5
"""Seconds between progress reports to the parent."""
MAX_RECV_IDS = 1000
"""Ids per ``recv`` frame (protocol limit)."""


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs; sent to it once, at fork."""

    scenario: str  # "idle", "relay" or "storm"
    url: str
    secret: bytes
    run_id: str  # prefix of user ids, unique per run so old inboxes stay out of the way
    connections: int  # across all processes
    processes: int
    source_ips: tuple[str, ...]  # empty: let the kernel choose
    connect_rate: float  # connects per second across all processes; 0 = as fast as allowed
    message_rate: float  # relay: sends per second across all processes; 0 = max
    window: int  # sends in flight (unacked) per connection
    message_bytes: int  # relay/storm: size of the body
    drain: float  # relay: seconds to wait for acks and deliveries after the last send
    inbox: int  # storm: items left unconfirmed per user before the disconnect
    jitter: float  # storm: reconnects spread uniformly over this many seconds
    max_pending: int  # connects and handshakes in flight per process
    handshake_timeout: float  # s

    def slice(self, worker: int) -> range:
        """Global user indices this worker owns."""
        n, p = self.connections, self.processes
        return range(worker * n // p, (worker + 1) * n // p)

    def user(self, index: int) -> str:
        return f"{self.run_id}.{index}"


class _Body(msgspec.Struct):
    k: int = -1
    t: int = 0


class _Incoming(msgspec.Struct):
    op: str
    cid: str | None = None
    id: str | None = None
    code: str | None = None
    body: _Body | None = None


_decode_strict = msgspec.json.Decoder(_Incoming).decode
_decode_any = msgspec.json.Decoder().decode


class Worker:
    """One process's users, counters and phase; the engine's handler."""

    def __init__(self, plan: Plan, worker: int, pipe: Connection) -> None:
        self.plan = plan
        self.worker = worker
        self.pipe = pipe
        target = Target.from_url(plan.url)
        secret = plan.secret
        self.engine = Engine(
            target,
            lambda user: issue_token(secret, user),
            self,
            max_pending=plan.max_pending,
            handshake_timeout=plan.handshake_timeout,
        )
        ips = plan.source_ips
        self.conns = [
            Conn(i, plan.user(i), ips[i % len(ips)] if ips else "") for i in plan.slice(worker)
        ]
        self.rng = random.Random(f"{plan.run_id}/{worker}")
        self.phase = "init"  # init, ramp, run, drain, storm, done
        self.confirm = plan.scenario != "storm"  # storm keeps items unconfirmed until after
        self.sending = False
        self.open_list: list[Conn] = []
        self.open_stale = False
        self.connected = 0
        self.failed: Counter[str] = Counter()
        self.disconnected: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.first_open = 0.0
        self.last_open = 0.0
        self.handshake_us = array("I")
        # Messaging figures.
        self.seq = 0
        self.sent = 0
        self.inflight = 0
        self.acked: set[int] = set()
        self.delivered: set[int] = set()
        self.confirmed: set[int] = set()
        self.duplicates = 0
        self.redelivered = 0
        self.receipts = 0
        self.foreign = 0
        self.latency_us = array("Q")
        self.recent: list[int] = []  # latency samples since the last progress report
        self.dirty_confirm: list[Conn] = []
        self.pad = b""
        # Relay timing: the rate window between go and stop.
        self.go_at = 0.0
        self.stop_at = 0.0
        self.sent_at_stop = 0
        self.acked_at_stop = 0
        self.delivered_at_stop = 0
        self.receipts_at_stop = 0
        self.drain_until = 0.0
        self.cursor = 0
        # Storm.
        self.dest: dict[int, Conn] = {}
        self.storm_at = 0.0
        self.storm_count = 0  # connections open when the storm hit
        self.back = 0
        self.back_at = 0.0
        self.expect_left = 0
        self.redelivered_at = 0.0
        self.retries: Counter[str] = Counter()
        self.primed_sent = False
        self.done = False

    # -- commands from the parent ---------------------------------------------

    def on_command(self) -> None:
        while self.pipe.poll():
            cmd, *_args = self.pipe.recv()
            now = time.monotonic()
            if cmd == "ramp":
                self.phase = "ramp"
                self.engine.ramp(self.conns, self.plan.connect_rate / self.plan.processes, now)
                if not self.conns:
                    self.ramped()
            elif cmd == "go":
                self.go(now)
            elif cmd == "storm":
                self.storm(now)
            elif cmd == "stop":
                self.stop(now)
            elif cmd == "report":
                self.progress("fresh")

    def go(self, now: float) -> None:
        self.phase = "run"
        self.go_at = now
        base = len(b'{"k":%d,"t":%d}' % (10**7, int(now * 1e6)))
        if self.plan.message_bytes > base + 7:
            self.pad = b',"p":"' + b"x" * (self.plan.message_bytes - base - 7) + b'"'
        if self.plan.scenario == "relay":
            self.sending = True
            if self.plan.message_rate <= 0:
                for conn in self.targets():
                    for _ in range(self.plan.window):
                        self.send_one(conn, now)
        elif self.plan.scenario == "storm":
            for conn in self.targets():
                for _ in range(self.plan.inbox):
                    self.send_one(conn, now)

    def stop(self, now: float) -> None:
        self.stop_at = now
        self.sending = False
        self.sent_at_stop = self.sent
        self.acked_at_stop = len(self.acked)
        self.delivered_at_stop = len(self.delivered)
        self.receipts_at_stop = self.receipts
        if self.plan.scenario == "relay":
            self.phase = "drain"
            self.drain_until = now + self.plan.drain
        else:
            self.finish()

    def storm(self, now: float) -> None:
        """Drop every connection at once; reconnect each after a jittered delay."""
        self.phase = "storm"
        self.storm_at = now
        for token in self.acked:
            dest = self.dest.get(token)
            if dest is not None:
                if dest.expect is None:
                    dest.expect = set()
                dest.expect.add(token)
                self.expect_left += 1
        self.confirm = True
        jitter = self.plan.jitter
        for conn in self.conns:
            if conn.state == OPEN:
                self.storm_count += 1
                self.engine.close(conn)
                conn.seen = set()
                self.engine.connect_at(conn, now + self.rng.uniform(0, jitter))
        self.open_stale = True
        if self.storm_count == 0:
            self.pipe.send(("back", now))
        if self.expect_left == 0:
            self.pipe.send(("redelivered", now))
        self.progress()

    # -- sending --------------------------------------------------------------

    def targets(self) -> list[Conn]:
        if self.open_stale:
            self.open_list = [c for c in self.conns if c.state == OPEN]
            self.open_stale = False
        return self.open_list

    def send_one(self, conn: Conn, now: float) -> None:
        targets = self.targets()
        n = len(targets)
        to = targets[self.rng.randrange(n)]
        if to is conn and n > 1:
            to = targets[(targets.index(conn) + 1) % n]
        self.seq += 1
        token = self.seq
        body = b'{"k":%d,"t":%d%b}' % (token, int(now * 1e6), self.pad)
        self.engine.send(
            conn, b'{"op":"send","to":"%b","cid":"%x","body":%b}' % (to.user.encode(), token, body)
        )
        if self.plan.scenario == "storm":
            self.dest[token] = to
        conn.inflight += 1
        self.inflight += 1
        self.sent += 1

    # -- engine callbacks -----------------------------------------------------

    def on_open(self, conn: Conn, now: float) -> None:
        conn.seen = set()
        conn.inflight = 0
        self.open_stale = True
        if self.phase == "storm":
            self.back += 1
            if self.back == self.storm_count:
                self.back_at = now
                self.pipe.send(("back", now))
            return
        self.connected += 1
        self.handshake_us.append(int((now - conn.started) * 1e6))
        if not self.first_open:
            self.first_open = now
        self.last_open = now
        if self.phase == "ramp" and self.connected + self.failed.total() == len(self.conns):
            self.ramped()

    def on_fail(self, conn: Conn, reason: str, now: float) -> None:
        if self.phase == "storm":
            # Full jitter backoff: 0.25 s doubling to 8 s, per failed attempt.
            self.retries[reason] += 1
            attempt = self.retries.total()
            delay = self.rng.uniform(0, min(8.0, 0.25 * 2 ** min(attempt, 6)))
            self.engine.connect_at(conn, now + delay)
            return
        self.failed[reason] += 1
        if self.phase == "ramp" and self.connected + self.failed.total() == len(self.conns):
            self.ramped()

    def on_close(self, conn: Conn, reason: str, now: float) -> None:
        self.disconnected[reason] += 1
        self.inflight -= conn.inflight
        conn.inflight = 0
        self.open_stale = True

    def ramped(self) -> None:
        self.pipe.send(("ramped", self.last_open))

    def on_text(self, conn: Conn, payload: bytes, now: float) -> None:
        try:
            m = _decode_strict(payload)
        except msgspec.ValidationError:
            self.foreign += 1
            self._confirm_foreign(conn, payload)
            return
        except msgspec.DecodeError:
            self.foreign += 1
            return
        op = m.op
        if op == "ack":
            if m.cid is not None:
                self.acked.add(int(m.cid, 16))
                conn.inflight -= 1
                self.inflight -= 1
                if self.sending and self.plan.message_rate <= 0:
                    self.send_one(conn, now)
        elif op == "msg":
            body = m.body
            if body is None or body.k < 0:
                self.foreign += 1
            else:
                token = body.k
                if token in conn.seen or token in self.confirmed:
                    self.duplicates += 1
                else:
                    conn.seen.add(token)
                    if token in self.delivered:
                        self.redelivered += 1
                    else:
                        self.delivered.add(token)
                        latency = int(now * 1e6) - body.t
                        self.latency_us.append(max(latency, 0))
                        if len(self.recent) < 2000:
                            self.recent.append(latency)
                    expect = conn.expect
                    if expect and token in expect:
                        expect.discard(token)
                        self.expect_left -= 1
                        if self.expect_left == 0 and self.phase == "storm":
                            self.redelivered_at = now
                            self.pipe.send(("redelivered", now))
                if self.confirm:
                    self.confirmed.add(token)
            if self.confirm and m.id is not None:
                self._queue_confirm(conn, m.id)
        elif op == "receipt":
            self.receipts += 1
            if self.confirm and m.id is not None:
                self._queue_confirm(conn, m.id)
        elif op == "error":
            self.errors[m.code or "?"] += 1
            if m.cid is not None:
                conn.inflight -= 1
                self.inflight -= 1
        else:
            self.foreign += 1

    def _confirm_foreign(self, conn: Conn, payload: bytes) -> None:
        """Confirm an item this run did not send (another client's), so it leaves."""
        try:
            obj = _decode_any(payload)
        except msgspec.DecodeError:
            return
        if isinstance(obj, dict) and obj.get("op") in ("msg", "receipt") and self.confirm:
            item_id = obj.get("id")
            if isinstance(item_id, str):
                self._queue_confirm(conn, item_id)

    def _queue_confirm(self, conn: Conn, item_id: str) -> None:
        if not conn.to_confirm:
            self.dirty_confirm.append(conn)
        conn.to_confirm.append(item_id)

    def on_turn(self, now: float) -> None:
        if self.dirty_confirm:
            dirty, self.dirty_confirm = self.dirty_confirm, []
            for conn in dirty:
                ids, conn.to_confirm = conn.to_confirm, []
                if conn.state != OPEN:
                    continue
                for i in range(0, len(ids), MAX_RECV_IDS):
                    chunk = ids[i : i + MAX_RECV_IDS]
                    self.engine.send(
                        conn, b'{"op":"recv","ids":["%b"]}' % '","'.join(chunk).encode()
                    )
        if self.sending and self.plan.message_rate > 0:
            self._send_due(now)
        priming = self.phase == "run" and self.plan.scenario == "storm" and not self.primed_sent
        if priming and self.inflight <= 0 and len(self.delivered) >= len(self.acked):
            self.primed_sent = True
            self.pipe.send(("primed", now))
        if self.phase == "drain":
            settled = self.inflight <= 0 and len(self.delivered) >= len(self.acked)
            if (settled and self.receipts >= len(self.delivered)) or now >= self.drain_until:
                self.finish()

    def _send_due(self, now: float) -> None:
        """Rate mode: send what the schedule owes, round-robin over open users."""
        due = int((now - self.go_at) * self.plan.message_rate / self.plan.processes) - self.sent
        targets = self.targets()
        n = len(targets)
        window = self.plan.window
        skipped = 0
        while due > 0 and n and skipped < n:
            conn = targets[self.cursor % n]
            self.cursor += 1
            if conn.inflight >= window or conn.state != OPEN:
                skipped += 1
                continue
            skipped = 0
            self.send_one(conn, now)
            due -= 1

    # -- reporting --------------------------------------------------------------

    def progress(self, kind: str = "progress") -> None:
        recent, self.recent = self.recent, []
        self.pipe.send(
            (
                kind,
                {
                    "open": sum(1 for c in self.conns if c.state == OPEN),
                    "connected": self.connected,
                    "failed": self.failed.total(),
                    "sent": self.sent,
                    "acked": len(self.acked),
                    "delivered": len(self.delivered),
                    "receipts": self.receipts,
                    "back": self.back,
                    "expect_left": self.expect_left,
                    "recent_us": recent,
                },
            )
        )

    def finish(self) -> None:
        now = time.monotonic()
        for conn in self.conns:
            self.engine.close(conn, abort=True)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        lost = len(self.acked - self.delivered)
        if self.plan.scenario == "storm":
            lost = self.expect_left
        self.pipe.send(
            (
                "done",
                {
                    "connected": self.connected,
                    "failed": dict(self.failed),
                    "disconnected": dict(self.disconnected),
                    "errors": dict(self.errors),
                    "first_open": self.first_open,
                    "last_open": self.last_open,
                    "handshake_us": self.handshake_us.tobytes(),
                    "sent": self.sent,
                    "acked": len(self.acked),
                    "delivered": len(self.delivered),
                    "receipts": self.receipts,
                    "sent_in_window": self.sent_at_stop,
                    "acked_in_window": self.acked_at_stop,
                    "delivered_in_window": self.delivered_at_stop,
                    "receipts_in_window": self.receipts_at_stop,
                    "go_at": self.go_at,
                    "stop_at": self.stop_at,
                    "finished_at": now,
                    "loss": lost,
                    "unacked": self.inflight,
                    "duplicates": self.duplicates,
                    "redelivered": self.redelivered,
                    "foreign": self.foreign,
                    "latency_us": self.latency_us.tobytes(),
                    "storm_at": self.storm_at,
                    "storm_count": self.storm_count,
                    "back": self.back,
                    "back_at": self.back_at,
                    "redelivered_at": self.redelivered_at,
                    "expect_left": self.expect_left,
                    "retries": dict(self.retries),
                    "cpu_s": usage.ru_utime + usage.ru_stime,
                },
            )
        )
        self.done = True


def run_worker(plan: Plan, worker: int, pipe: Connection) -> None:
    """Entry point of a load-generator process (forked by the runner)."""
    w = Worker(plan, worker, pipe)
    w.engine.watch(pipe.fileno(), w.on_command)
    gc.collect()
    gc.freeze()  # the user table is permanent: keep it out of every collection
    pipe.send(("hello", None))
    next_progress = time.monotonic() + PROGRESS_EVERY
    while not w.done:
        w.engine.poll(0.05)
        now = time.monotonic()
        if now >= next_progress and not w.done:
            next_progress = now + PROGRESS_EVERY
            w.progress()
    pipe.close()


__all__ = ["Plan", "Worker", "run_worker"]
