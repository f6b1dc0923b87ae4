"""Assemble the doctor's findings and write them out: a rich table, JSON, a sysctl.d file,
a systemd unit.

Rules:
- `build_report` is the only place that decides whether to measure; everything after it is
  formatting of a finished `Report` and does no I/O besides writing to the given stream.
- The overall verdict is the worst of the limits and the memory budget, with "unknown"
  counted as "warn": a value that could not be read is a reason to look, not a pass.
- Exit status: 0 ok, 1 warn, 2 fail (`EXIT_CODES`).
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table
from rich.text import Text

from roost.doctor.budget import (
    DEFAULT_PAIRS,
    KERNEL_BYTES_PER_SOCKET_DEFAULT,
    ROOST_BYTES_PER_CONN_DEFAULT,
    WORKER_BASE_BYTES_DEFAULT,
    MeasureError,
    MemoryBudget,
    measure_socket_cost,
    memory_budget,
)
from roost.doctor.limits import Host, Limit, Target, check_limits, need_fds_per_worker
from roost.doctor.procfs import DEFAULT_ROOT

Overall = Literal["ok", "warn", "fail"]
EXIT_CODES: dict[Overall, int] = {"ok": 0, "warn": 1, "fail": 2}
STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "unknown": "magenta"}


@dataclass(frozen=True, slots=True)
class Report:
    target: Target
    limits: list[Limit]
    memory: MemoryBudget

    @property
    def verdict(self) -> Overall:
        verdicts = {limit.verdict for limit in self.limits} | {self.memory.verdict}
        if "fail" in verdicts:
            return "fail"
        if verdicts & {"warn", "unknown"}:
            return "warn"
        return "ok"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": self.target.connections,
            "workers": self.target.workers,
            "verdict": self.verdict,
            "limits": [limit.as_dict() for limit in self.limits],
            "memory": self.memory.as_dict(),
            "cpus": self.target.cpus,
            "local_loadgen": self.target.local_loadgen,
        }


def build_report(
    target: Target,
    host: Host,
    *,
    measure: bool = True,
    pairs: int = DEFAULT_PAIRS,
    roost_bytes_per_conn: int = ROOST_BYTES_PER_CONN_DEFAULT,
    worker_base_bytes: int = WORKER_BASE_BYTES_DEFAULT,
) -> Report:
    """Check every limit and, unless `measure` is False, measure the kernel cost per socket.

    The measurement opens real sockets on this host, so it is skipped when the proc root is
    not the real /proc: figures read from a copy of another machine's /proc would not match."""
    limits = check_limits(target, host)
    cost = None
    kernel = KERNEL_BYTES_PER_SOCKET_DEFAULT
    if not measure:
        source = "default (--no-measure): NOTES.md, ~10 KB Slab per pair at 204k pairs"
    elif host.proc.root.resolve() != Path(DEFAULT_ROOT).resolve():
        source = f"default: not measured, --proc-root {host.proc.root} is not {DEFAULT_ROOT}"
    else:
        try:
            cost = measure_socket_cost(pairs, host.proc)
        except MeasureError as exc:
            source = f"default: {exc}"
        else:
            kernel, source = cost.kernel_bytes_per_socket, cost.source
    memory = memory_budget(
        target,
        kernel_bytes_per_socket=kernel,
        source=source,
        roost_bytes_per_conn=roost_bytes_per_conn,
        worker_base_bytes=worker_base_bytes,
        proc=host.proc,
        measurement=cost,
    )
    return Report(target, limits, memory)


# -- human output ----------------------------------------------------------------------------


def fmt_value(value: int | list[int] | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " ".join(f"{v:,}" for v in value)
    if isinstance(value, int):
        return f"{value:,}"
    return value


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,} B"


def _verdict(verdict: str) -> Text:
    return Text(verdict.upper(), style=STYLES.get(verdict, ""))


def _who_can_raise(limit: Limit) -> str:
    if limit.name.startswith("RLIMIT_"):
        if limit.raisable:
            return "this process may raise it itself (setrlimit)"
        return (
            "not by this process (no CAP_SYS_RESOURCE): run more workers, or have a "
            "supervisor start roost with a higher limit (systemd LimitNOFILE)"
        )
    if limit.raisable:
        return "this process may write it (root): run the fix, persist with --write-sysctl"
    return "not by this process: /proc/sys is not writable here, ask the machine's admin"


def render(report: Report, console: Console) -> None:
    t = report.target
    title = (
        f"roost doctor: {t.connections:,} connections on {t.workers} workers ({t.cpus} CPUs"
        + (", load generator on this box" if t.local_loadgen else "")
        + ")"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("limit", no_wrap=True)
    table.add_column("current", justify="right")
    table.add_column("needed", justify="right")
    table.add_column("verdict")
    table.add_column("raisable here")
    for limit in report.limits:
        table.add_row(
            limit.name,
            fmt_value(limit.current),
            fmt_value(limit.needed),
            _verdict(limit.verdict),
            "yes" if limit.raisable else "no",
        )
    console.print(table)

    problems = [limit for limit in report.limits if limit.verdict != "ok"]
    for limit in problems:
        console.print(Text.assemble(_verdict(limit.verdict), " ", (limit.name, "bold")))
        console.print(Text(f"  why:     {limit.reason}"))
        console.print(Text(f"  symptom: {limit.symptom}"))
        if limit.fix:
            console.print(Text(f"  fix:     {limit.fix}"))
        if limit.verdict in ("warn", "fail"):
            console.print(Text(f"  raise:   {_who_can_raise(limit)}"))

    m = report.memory
    mem = Table(title="memory budget", title_justify="left", show_header=False)
    mem.add_column("item", no_wrap=True)
    mem.add_column("value", justify="right")
    mem.add_column("note")
    mem.add_row("kernel per connection (1 socket)", f"{m.kernel_bytes_per_conn:,} B", m.source)
    mem.add_row("kernel per loopback pair (2 sockets)", f"{m.kernel_bytes_per_pair:,} B", "")
    if m.measurement is not None:
        c = m.measurement
        floor = f"{c.object_floor:,} B" if c.object_floor is not None else "slabinfo unreadable"
        mem.add_row(
            "  measured",
            f"{c.slab_bytes_per_socket:,} B",
            f"Slab/socket; unreclaimable {c.unreclaimable_bytes_per_socket:,} B; object floor "
            f"{floor}; TCP inuse +{c.tcp_inuse_delta:,}, sockstat mem "
            f"{c.tcp_mem_pages_delta:+,} pages",
        )
    mem.add_row("roost user space per connection", f"{m.roost_bytes_per_conn:,} B", "--roost-bytes")
    if m.client_bytes_per_conn:
        mem.add_row("local client socket", f"{m.client_bytes_per_conn:,} B", "--local-loadgen")
    mem.add_row(
        "per worker process", fmt_bytes(m.worker_base_bytes), f"x {t.workers} (--worker-bytes)"
    )
    mem.add_row("needed", fmt_bytes(m.needed_bytes), m.reason)
    mem.add_row("available", fmt_bytes(m.available_bytes), "MemAvailable")
    mem.add_row(
        "max connections",
        fmt_value(m.max_connections),
        f"at {m.bytes_per_conn:,} B per connection",
    )
    mem.add_row("verdict", _verdict(m.verdict), "")
    console.print(mem)

    blockers = [limit.name for limit in report.limits if limit.verdict == "fail"]
    if m.verdict == "fail":
        blockers.append("memory")
    line = Text.assemble("verdict: ", _verdict(report.verdict), f" (exit {report.exit_code})")
    if blockers:
        line.append(f": {t.connections:,} connections are stopped by " + ", ".join(blockers))
    elif report.verdict == "warn":
        line.append(
            f": nothing stops {t.connections:,} idle connections; the warnings bite under load"
        )
    console.print(line)


# -- files -----------------------------------------------------------------------------------


def sysctl_file(report: Report, command: str = "roost doctor --write-sysctl FILE") -> str:
    """A sysctl.d file: raised values as settings, sufficient ones as comments."""
    t = report.target
    lines = [
        f"# Written by: {command}",
        f"# For {t.connections:,} connections on {t.workers} workers on this machine.",
        "# Install in /etc/sysctl.d/ and apply with: sysctl --system",
        "# Commented-out lines show values that already suffice.",
        "",
    ]
    for limit in report.limits:
        if limit.name.startswith("RLIMIT_"):
            continue
        if limit.sysctl is not None:
            key, value = limit.sysctl
            lines.append(f"# {limit.reason}")
            lines.append(f"# hit as: {limit.symptom}")
            lines.append(f"{key} = {value}")
            lines.append("")
        elif limit.verdict == "unknown":
            lines.append(f"# {limit.name}: {limit.reason}")
        elif limit.current is not None:
            lines.append(f"# {limit.name} = {fmt_value(limit.current).replace(',', '')}")
    nofile = need_fds_per_worker(t.connections, t.workers)
    lines += [
        "",
        f"# RLIMIT_NOFILE is not a sysctl: each worker needs {nofile}.",
        f"# Set LimitNOFILE={nofile} in the unit (roost doctor --systemd) or limits.conf.",
    ]
    return "\n".join(lines) + "\n"


def roost_command() -> str:
    found = shutil.which("roost")
    return found if found else f"{sys.executable} -m roost"


def systemd_unit(target: Target, limits: list[Limit]) -> str:
    """A unit file for `roost serve` whose LimitNOFILE covers the busiest worker."""
    nofile = need_fds_per_worker(target.connections, target.workers)
    nr_open = next((lim for lim in limits if lim.name == "fs.nr_open"), None)
    serve = shlex.join(
        [
            *shlex.split(roost_command()),
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--data-dir",
            "/var/lib/roost",
            "--workers",
            str(target.workers),
            "--max-connections",
            str(target.connections),
        ]
    )
    lines = [
        f"# roost.service: written by roost doctor --connections {target.connections} "
        f"--workers {target.workers} --systemd",
        f"# LimitNOFILE covers the busiest of {target.workers} workers "
        f"({target.connections:,} connections, see docs/doctor.md).",
        "# Apply the kernel settings first: roost doctor --write-sysctl "
        "/etc/sysctl.d/90-roost.conf && sysctl --system",
    ]
    if nr_open is not None and nr_open.verdict != "ok":
        lines.append(
            f"# LimitNOFILE={nofile} is above fs.nr_open ({fmt_value(nr_open.current)}): "
            "the service cannot start until fs.nr_open is raised."
        )
    lines += [
        "",
        "[Unit]",
        "Description=roost messaging server",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={serve}",
        f"LimitNOFILE={nofile}",
        "DynamicUser=yes",
        "StateDirectory=roost",
        "# SIGTERM drains: commit pending work, close every connection with 1001.",
        "KillSignal=SIGTERM",
        "TimeoutStopSec=60",
        "Restart=on-failure",
        "RestartSec=2",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
