"""The cheap part of `roost doctor`, for `roost serve` to run at start.

It reads the same limits as the doctor (a dozen small /proc files and getrlimit), measures
nothing, and returns one warning line per shortfall, each with its fix. The caller prints
them; none is fatal, because a server asked for 1,000,000 connections may still be useful
with fewer.
"""

from __future__ import annotations

from roost.doctor.limits import Host, Limit, Target, check_limits
from roost.doctor.procfs import DEFAULT_ROOT
from roost.doctor.report import fmt_value


def format_warning(limit: Limit, target: Target) -> str:
    """One line: what is short, for what, what the user will see, and the fix."""
    head = (
        f"{limit.verdict}: {limit.name} is {fmt_value(limit.current)}, "
        f"{target.connections:,} connections on {target.workers} workers need "
        f"{fmt_value(limit.needed)}"
    )
    fix = limit.fix or "see roost doctor"
    return f"{head}; when hit: {limit.symptom}. Fix: {fix}"


def preflight(max_connections: int, workers: int, *, proc_root: str = DEFAULT_ROOT) -> list[str]:
    """One warning string per limit that is short of `max_connections` on `workers`.

    Limits that could not be read are not reported here (`roost doctor` shows them), so a
    container without some /proc entries starts quietly."""
    target = Target(connections=max_connections, workers=workers)
    return [
        format_warning(limit, target)
        for limit in check_limits(target, Host(proc_root))
        if limit.verdict in ("warn", "fail")
    ]
