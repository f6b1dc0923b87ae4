"""Figures from a run: the JSON record, the summary table and the plot.

The JSON keys are a contract (issue 5) other tools read: ``scenario``,
``target``, ``connections``, ``connected``, ``failed``, ``duration_s``,
``connect_rate_per_s``, ``acked_per_s``, ``delivered_per_s``, ``latency_ms``,
``loss``, ``duplicates``, ``server_bytes_per_conn``, ``kernel_bytes_per_conn``,
``loadgen_cpu_s``. A figure that does not apply to the scenario is null; more
keys follow them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from roost.bench.runner import Outcome

REQUIRED_KEYS = (
    "scenario",
    "target",
    "connections",
    "connected",
    "failed",
    "duration_s",
    "connect_rate_per_s",
    "acked_per_s",
    "delivered_per_s",
    "latency_ms",
    "loss",
    "duplicates",
    "server_bytes_per_conn",
    "kernel_bytes_per_conn",
    "loadgen_cpu_s",
)


def percentiles(values: array[int] | list[int], scale: float = 1e-3) -> dict[str, float] | None:
    """Nearest-rank p50/p99/p999/max of ``values`` times ``scale``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(p * n) - 1))] * scale, 3)

    return {"p50": rank(0.50), "p99": rank(0.99), "p999": rank(0.999), "max": rank(1.0)}


def machine() -> dict[str, Any]:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {
        "cores": os.cpu_count(),
        "ram_bytes": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _sum(workers: list[dict[str, Any]], key: str) -> int:
    return sum(int(w[key]) for w in workers)


def _merge(workers: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for w in workers:
        total.update(w[key])
    return dict(total.most_common())


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def build(out: Outcome, target: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of one run, as written by ``--json``."""
    plan, ph, ws = out.plan, out.phases, out.workers
    scenario = plan.scenario
    connected = _sum(ws, "connected")
    last_open = max((w["last_open"] for w in ws), default=0.0)
    ramp_s = max(0.0, last_open - ph.ramp) if connected else None

    latency: array[int] = array("Q")
    handshake: array[int] = array("I")
    for w in ws:
        latency.frombytes(w["latency_us"])
        handshake.frombytes(w["handshake_us"])

    server_bpc = kernel_bpc = None
    if out.open_at_measure:
        if out.rss_before is not None and out.rss_after is not None:
            server_bpc = round((out.rss_after - out.rss_before) / out.open_at_measure)
        if out.kernel_before is not None and out.kernel_after is not None:
            kernel_bpc = round(out.kernel_after.growth(out.kernel_before) / out.open_at_measure)

    messaging = scenario != "idle"
    window = ph.stop - ph.go
    acked_per_s = delivered_per_s = receipts_per_s = None
    if scenario == "relay":
        acked_per_s = _rate(_sum(ws, "acked_in_window"), window)
        delivered_per_s = _rate(_sum(ws, "delivered_in_window"), window)
        receipts_per_s = _rate(_sum(ws, "receipts_in_window"), window)
        duration = window
    elif scenario == "storm":
        end = ph.redelivered if ph.redelivered >= ph.storm > 0 else ph.stop
        duration = end - ph.storm
    else:
        duration = ph.stop - ph.ramped

    loadgen_cpu = sum(w["cpu_s"] for w in ws) + out.parent_cpu_s
    wall = ph.end - ph.ramp if ph.end else 0.0
    result: dict[str, Any] = {
        "scenario": scenario,
        "target": target,
        "connections": plan.connections,
        "connected": connected,
        "failed": _merge(ws, "failed"),
        "duration_s": round(duration, 3),
        "connect_rate_per_s": _rate(connected, ramp_s) if ramp_s else None,
        "acked_per_s": acked_per_s,
        "delivered_per_s": delivered_per_s,
        "latency_ms": percentiles(latency) if scenario == "relay" else None,
        "loss": _sum(ws, "loss") if messaging else None,
        "duplicates": _sum(ws, "duplicates") if messaging else None,
        "server_bytes_per_conn": server_bpc,
        "kernel_bytes_per_conn": kernel_bpc,
        "loadgen_cpu_s": round(loadgen_cpu, 2),
        # More figures.
        "receipts_per_s": receipts_per_s,
        "open_at_measure": out.open_at_measure,
        "disconnected": _merge(ws, "disconnected"),
        "errors": _merge(ws, "errors"),
        "sent": _sum(ws, "sent") if messaging else None,
        "acked": _sum(ws, "acked") if messaging else None,
        "delivered": _sum(ws, "delivered") if messaging else None,
        "receipts": _sum(ws, "receipts") if messaging else None,
        "unacked": _sum(ws, "unacked") if messaging else None,
        "redelivered": _sum(ws, "redelivered") if messaging else None,
        "foreign": _sum(ws, "foreign"),
        "handshake_ms": percentiles(handshake),
        "ramp_s": round(ramp_s, 3) if ramp_s is not None else None,
        "wall_s": round(wall, 3),
        "loadgen_cpu_pct": round(100 * loadgen_cpu / wall / (os.cpu_count() or 1), 1)
        if wall
        else None,
        "server_cpu_s": round(out.server_cpu_s, 2) if out.server_cpu_s is not None else None,
        "server_rss_before": out.rss_before,
        "server_rss_after": out.rss_after,
        "kernel_growth_bytes": (
            out.kernel_after.growth(out.kernel_before)
            if out.kernel_before and out.kernel_after
            else None
        ),
        "processes": plan.processes,
        "source_ips": len(plan.source_ips),
        "message_bytes": plan.message_bytes if messaging else None,
        "message_rate": (plan.message_rate or "max") if scenario == "relay" else None,
        "window": plan.window if scenario == "relay" else None,
        "url": plan.url,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
    }
    if scenario == "storm":
        result |= {
            "storm_connections": _sum(ws, "storm_count"),
            "storm_back": _sum(ws, "back"),
            "storm_reconnect_s": (
                round(ph.back - ph.storm, 3) if ph.back >= ph.storm > 0 else None
            ),
            "storm_redelivered_s": (
                round(ph.redelivered - ph.storm, 3) if ph.redelivered >= ph.storm > 0 else None
            ),
            "storm_pending_items": _sum(ws, "acked"),
            "storm_retries": _merge(ws, "retries"),
        }
    result |= extra or {}
    result["timeseries"] = out.samples
    return result


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "0"
    return str(value)


def summary_table(result: dict[str, Any]) -> Table:
    table = Table(
        title=f"roost bench {result['scenario']} -> {result['target']}", show_header=False
    )
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("connections", "connections"),
        ("connected", "connected"),
        ("failed", "failed"),
        ("disconnected", "disconnected"),
        ("connect rate /s", "connect_rate_per_s"),
        ("handshake ms", "handshake_ms"),
        ("duration s", "duration_s"),
        ("acked /s", "acked_per_s"),
        ("delivered /s", "delivered_per_s"),
        ("receipts /s", "receipts_per_s"),
        ("latency ms", "latency_ms"),
        ("loss", "loss"),
        ("duplicates", "duplicates"),
        ("errors", "errors"),
        ("storm: all back after s", "storm_reconnect_s"),
        ("storm: all redelivered after s", "storm_redelivered_s"),
        ("server bytes/conn (RSS)", "server_bytes_per_conn"),
        ("kernel bytes/conn", "kernel_bytes_per_conn"),
        ("server CPU s", "server_cpu_s"),
        ("load generator CPU s", "loadgen_cpu_s"),
        ("load generator CPU %", "loadgen_cpu_pct"),
    ]
    for label, key in rows:
        if key in result and (result[key] is not None or key in REQUIRED_KEYS):
            table.add_row(label, _fmt(result[key]))
    return table


def print_summary(result: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(summary_table(result))


def progress_table(phase: str, totals: dict[str, Any]) -> Table:
    table = Table(show_header=True, title=f"phase: {phase}")
    for name in (
        "open",
        "connected",
        "failed",
        "acked",
        "delivered",
        "receipts",
        "p99 ms",
        "server RSS MB",
    ):
        table.add_column(name, justify="right")
    rss = totals.get("server_rss")
    p99 = totals.get("p99_ms")
    table.add_row(
        f"{totals['open']:,}/{totals['requested']:,}",
        f"{totals['connected']:,}",
        f"{totals['failed']:,}",
        f"{totals['acked']:,}",
        f"{totals['delivered']:,}",
        f"{totals['receipts']:,}",
        f"{p99:.2f}" if p99 is not None else "-",
        f"{rss / 1e6:,.1f}" if rss is not None else "-",
    )
    return table


def plot(result: dict[str, Any], path: Path) -> None:
    """Connections, memory and latency over time, one panel each."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    rows = result["timeseries"]
    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    axes[0].plot(t, [r["open"] for r in rows], label="open connections")
    axes[0].set_ylabel("connections")
    rss = [r["server_rss"] / 2**20 if r["server_rss"] is not None else math.nan for r in rows]
    kern = [
        r["kernel_growth"] / 2**20 if r["kernel_growth"] is not None else math.nan for r in rows
    ]
    axes[1].plot(t, rss, label="server RSS")
    axes[1].plot(t, kern, label="kernel growth (slab + socket buffers)")
    axes[1].set_ylabel("MiB")
    axes[1].legend(loc="upper left")
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        axes[2].plot(t, [r[key] if r[key] is not None else math.nan for r in rows], label=label)
    axes[2].set_ylabel("latency ms")
    axes[2].set_xlabel("s since the ramp started")
    axes[2].legend(loc="upper left")
    title = f"roost bench {result['scenario']} -> {result['target']}"
    fig.suptitle(f"{title}, {result['connections']:,} connections")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
