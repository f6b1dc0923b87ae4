"""The parent of a bench run: forks the load-generator processes, steps them
through the scenario's phases, samples server and kernel memory, and gathers
their figures.

Rules:
- Workers are forked, one control pipe each. The parent sends commands
  (``ramp``, ``go``, ``storm``, ``stop``) to all at once and waits for every
  worker's answer before the next phase, so all processes ramp, relay and
  storm together.
- The memory baseline is taken after the workers are forked and before the
  first connect; the after-figure once the ramp is complete and settled (idle:
  at the end of the hold). Both are divided by the connections open then.
- Every wait is bounded: a phase that does not finish in time is cut short
  and the run reports what it got.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from roost.bench.meter import KernelSnapshot, ServerProbe, kernel_snapshot, own_cpu_s
from roost.bench.scenarios import Plan, run_worker
from roost.errors import LocalError

SAMPLE_EVERY = 0.5
"""Seconds between time-series samples (and display refreshes)."""
SETTLE = 0.5
"""Seconds to let the server settle after the ramp before measuring memory."""
HELLO_TIMEOUT = 30.0
PRIME_TIMEOUT = 30.0
DONE_TIMEOUT = 60.0
CLOSES_PER_S_AT_WORST = 2_000.0  # connections a starved machine closes per second


class WorkerDied(LocalError):
    """A load-generator process exited before reporting."""


@dataclass
class Phases:
    """Monotonic times of the run's milestones, in the parent's clock (shared
    with the workers: CLOCK_MONOTONIC is system-wide on Linux)."""

    ramp: float = 0.0
    ramped: float = 0.0
    go: float = 0.0
    primed: float = 0.0
    storm: float = 0.0
    back: float = 0.0
    redelivered: float = 0.0
    stop: float = 0.0
    end: float = 0.0


@dataclass
class Outcome:
    """Everything the report needs: worker figures, phases, memory, samples."""

    plan: Plan
    phases: Phases
    workers: list[dict[str, Any]]
    open_at_measure: int = 0
    rss_before: int | None = None
    rss_after: int | None = None
    kernel_before: KernelSnapshot | None = None
    kernel_after: KernelSnapshot | None = None
    server_cpu_s: float | None = None
    parent_cpu_s: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)


Display = Callable[[str, dict[str, Any]], None]
"""Called with the phase name and the summed progress after each sample."""


class _Run:
    def __init__(
        self, plan: Plan, probe: ServerProbe | None, kernel: bool, display: Display | None
    ) -> None:
        self.plan = plan
        self.probe = probe
        self.kernel = kernel
        self.display = display
        self.phases = Phases()
        self.phase = "start"
        self.pipes: list[Connection] = []  # open control pipes (closed ones leave)
        self.worker_of: dict[Connection, int] = {}
        self.procs: list[Any] = []
        self.progress: dict[int, dict[str, Any]] = {}
        self.events: dict[str, set[int]] = {}
        self.done: dict[int, dict[str, Any]] = {}
        self.samples: list[dict[str, Any]] = []
        self.recent: list[int] = []
        self.next_sample = 0.0
        self.kernel_base: KernelSnapshot | None = None

    def start(self) -> None:
        ctx = multiprocessing.get_context("fork")
        for w in range(self.plan.processes):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(
                target=run_worker,
                args=(self.plan, w, child_end),
                name=f"roost-bench-{w}",
                daemon=True,
            )
            proc.start()
            child_end.close()
            self.pipes.append(parent_end)
            self.worker_of[parent_end] = w
            self.procs.append(proc)
        self.wait_for("hello", HELLO_TIMEOUT)

    def broadcast(self, *cmd: Any) -> None:
        for pipe in self.pipes:
            pipe.send(cmd)

    def pump(self, timeout: float) -> None:
        """Read whatever the workers sent within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready = wait(self.pipes, max(0.0, min(left, SAMPLE_EVERY)))
            for pipe in ready:
                assert isinstance(pipe, Connection)
                w = self.worker_of[pipe]
                try:
                    kind, data = pipe.recv()
                except EOFError:
                    if w in self.done:
                        self.pipes.remove(pipe)
                        continue
                    raise WorkerDied(f"load-generator process {w} exited early") from None
                if kind in ("progress", "fresh"):
                    self.recent.extend(data.pop("recent_us"))
                    self.progress[w] = data
                    if kind == "fresh":
                        self.events.setdefault(kind, set()).add(w)
                elif kind == "done":
                    self.done[w] = data
                else:
                    self.events.setdefault(kind, set()).add(w)
                    if kind in ("primed", "back", "redelivered"):
                        setattr(self.phases, kind, max(getattr(self.phases, kind), data))
            now = time.monotonic()
            if now >= self.next_sample:
                self.next_sample = now + SAMPLE_EVERY
                self.sample(now)
            if now >= deadline or not self.pipes:
                return
            if ready:
                return

    def wait_for(self, event: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.events.get(event, ())) < self.plan.processes:
            if time.monotonic() >= deadline:
                return False
            self.pump(deadline - time.monotonic())
        return True

    def refresh(self) -> None:
        """Make every worker report its figures now (progress reports may be 0.5 s old)."""
        self.events.pop("fresh", None)
        self.broadcast("report")
        self.wait_for("fresh", HELLO_TIMEOUT)

    def hold(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.pump(deadline - time.monotonic())

    def totals(self) -> dict[str, Any]:
        keys = ("open", "connected", "failed", "sent", "acked", "delivered", "receipts", "back")
        return {k: sum(p.get(k, 0) for p in self.progress.values()) for k in keys} | {
            "expect_left": sum(p.get("expect_left", 0) for p in self.progress.values()),
            "requested": self.plan.connections,
        }

    def sample(self, now: float) -> None:
        totals = self.totals()
        recent, self.recent = sorted(self.recent), []
        row: dict[str, Any] = {
            "t": round(now - self.phases.ramp, 3) if self.phases.ramp else 0.0,
            "phase": self.phase,
            "open": totals["open"],
            "acked": totals["acked"],
            "delivered": totals["delivered"],
            "p50_ms": recent[len(recent) // 2] / 1000 if recent else None,
            "p99_ms": recent[min(len(recent) - 1, int(len(recent) * 0.99))] / 1000
            if recent
            else None,
            "server_rss": None,
            "kernel_growth": None,
        }
        if self.probe is not None:
            row["server_rss"] = self.probe.rss()
        if self.kernel and self.kernel_base is not None:
            row["kernel_growth"] = kernel_snapshot().growth(self.kernel_base)
        self.samples.append(row)
        if self.display is not None:
            self.display(
                self.phase, totals | {"p99_ms": row["p99_ms"], "server_rss": row["server_rss"]}
            )

    def stop_workers(self) -> None:
        self.broadcast("stop")
        # A load generator holding many connections on a busy machine takes a
        # while to finish; until it has, its pipe must be read, or it blocks
        # writing its results and never exits.
        deadline = (
            time.monotonic()
            + DONE_TIMEOUT
            + self.plan.drain
            + self.plan.connections / CLOSES_PER_S_AT_WORST
        )
        while len(self.done) < self.plan.processes and time.monotonic() < deadline:
            self.pump(deadline - time.monotonic())
        for proc in self.procs:
            proc.join(5 if len(self.done) == self.plan.processes else 0.1)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if len(self.done) < self.plan.processes:
            raise WorkerDied(
                f"{self.plan.processes - len(self.done)} load-generator process(es) never reported"
            )


def execute(
    plan: Plan,
    *,
    hold: float = 0.0,
    duration: float = 10.0,
    probe: ServerProbe | None = None,
    kernel: bool = False,
    display: Display | None = None,
) -> Outcome:
    """Run ``plan`` and return the raw outcome (``report`` turns it into figures).

    ``hold``: idle seconds after the ramp. ``duration``: relay sending time, or
    the storm's limit for everyone to be back and redelivered.
    """
    cpu0 = own_cpu_s()
    run = _Run(plan, probe, kernel, display)
    out = Outcome(plan, run.phases, [])
    try:
        run.start()
        server_cpu0 = probe.cpu_s() if probe else None
        if probe is not None:
            out.rss_before = probe.rss()
        if kernel:
            out.kernel_before = run.kernel_base = kernel_snapshot()
        run.phase = "ramp"
        run.phases.ramp = time.monotonic()
        run.broadcast("ramp")
        # Each connect either completes or times out, so the ramp ends by itself.
        ramp_limit = plan.connections / plan.connect_rate if plan.connect_rate > 0 else 0.0
        run.wait_for("ramped", ramp_limit + plan.handshake_timeout * (1 + plan.connections / 1000))
        run.phases.ramped = time.monotonic()

        def measure() -> None:
            run.refresh()
            out.open_at_measure = run.totals()["open"]
            if probe is not None:
                out.rss_after = probe.rss()
            if kernel:
                out.kernel_after = kernel_snapshot()

        if plan.scenario == "idle":
            run.phase = "hold"
            run.hold(max(hold, SETTLE))
            measure()
            run.phases.go = run.phases.ramped
            run.phases.stop = time.monotonic()
        else:
            run.hold(SETTLE)
            measure()
            run.phases.go = time.monotonic()
            run.broadcast("go")
            if plan.scenario == "relay":
                run.phase = "relay"
                run.hold(duration)
                run.phases.stop = time.monotonic()
                run.phase = "drain"
            else:
                run.phase = "prime"
                run.wait_for("primed", PRIME_TIMEOUT)
                run.phase = "storm"
                run.phases.storm = time.monotonic()
                run.broadcast("storm")
                ok = run.wait_for("back", duration)
                if ok:
                    run.wait_for(
                        "redelivered", max(0.0, run.phases.storm + duration - time.monotonic())
                    )
                run.phases.stop = time.monotonic()
        run.stop_workers()
        run.phases.end = time.monotonic()
        run.sample(run.phases.end)
        if probe is not None and server_cpu0 is not None:
            out.server_cpu_s = probe.cpu_s() - server_cpu0
    finally:
        for proc in run.procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    out.workers = [run.done[w] for w in sorted(run.done)]
    out.samples = run.samples
    out.parent_cpu_s = own_cpu_s() - cpu0
    return out
