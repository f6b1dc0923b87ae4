"""`roost doctor`: will this machine hold N connections, and what must change?

The CLI wires it in with:

    from roost.doctor.command import add_parser
    add_parser(subparsers)          # adds "doctor", with func=run

and runs `args.func(args)`, whose return value is the exit status: 0 when every limit and
the memory budget are ok, 1 on a warning (or a value that could not be read), 2 on a
failure. `python -m roost.doctor.command ...` runs it standalone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console

from roost.doctor.budget import (
    DEFAULT_PAIRS,
    MAX_PAIRS,
    ROOST_BYTES_PER_CONN_DEFAULT,
    WORKER_BASE_BYTES_DEFAULT,
)
from roost.doctor.limits import Host, Target, check_limits
from roost.doctor.procfs import DEFAULT_ROOT
from roost.doctor.report import build_report, render, sysctl_file, systemd_unit

DEFAULT_CONNECTIONS = 1_000_000


def _count(text: str) -> int:
    """An integer that may be written 1000000, 1_000_000 or 1,000,000."""
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _width(to_stderr: bool) -> int | None:
    """Let rich size a terminal; give pipes and files 120 columns instead of rich's 80, so
    that sysctl names and fixes stay on one line."""
    stream = sys.stderr if to_stderr else sys.stdout
    return None if stream.isatty() else 120


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connections",
        type=_positive,
        default=DEFAULT_CONNECTIONS,
        metavar="N",
        help="concurrent connections to check for (default: 1,000,000)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="W",
        help="roost worker processes (default: the number of CPUs)",
    )
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    parser.add_argument(
        "--write-sysctl",
        metavar="FILE",
        help="write a sysctl.d file with the recommended values",
    )
    parser.add_argument(
        "--systemd",
        action="store_true",
        help="print a systemd unit for roost serve with LimitNOFILE, and exit 0",
    )
    parser.add_argument(
        "--no-measure",
        action="store_true",
        help="do not open loopback sockets; use the documented kernel cost per socket",
    )
    parser.add_argument(
        "--pairs",
        type=_positive,
        default=DEFAULT_PAIRS,
        metavar="P",
        help=f"loopback pairs to measure with (default {DEFAULT_PAIRS}, at most {MAX_PAIRS})",
    )
    parser.add_argument(
        "--roost-bytes",
        type=_count,
        default=ROOST_BYTES_PER_CONN_DEFAULT,
        metavar="B",
        help=f"roost user-space bytes per idle connection (default {ROOST_BYTES_PER_CONN_DEFAULT},"
        " from BENCHMARKS.md)",
    )
    parser.add_argument(
        "--worker-bytes",
        type=_count,
        default=WORKER_BASE_BYTES_DEFAULT,
        metavar="B",
        help="memory of one worker before connections "
        f"(default {WORKER_BASE_BYTES_DEFAULT // 2**20} MiB, from BENCHMARKS.md)",
    )
    parser.add_argument(
        "--local-loadgen",
        action="store_true",
        help="the clients run on this box too (roost bench): count their sockets and ports",
    )
    parser.add_argument(
        "--proc-root",
        default=DEFAULT_ROOT,
        metavar="DIR",
        help="read /proc files from DIR (a copy of another machine's; skips the measurement)",
    )


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `doctor` subcommand to the CLI's subparsers; it sets `func=run`."""
    parser = subparsers.add_parser(
        "doctor",
        help="check the limits and memory for N connections",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the doctor with parsed arguments; returns the exit status (0 ok, 1 warn, 2 fail)."""
    target = Target(
        connections=args.connections,
        workers=args.workers or os.cpu_count() or 1,
        local_loadgen=getattr(args, "local_loadgen", False),
    )
    host = Host(getattr(args, "proc_root", DEFAULT_ROOT))
    if getattr(args, "systemd", False):
        sys.stdout.write(systemd_unit(target, check_limits(target, host)))
        return 0

    report = build_report(
        target,
        host,
        measure=not getattr(args, "no_measure", False),
        pairs=getattr(args, "pairs", DEFAULT_PAIRS),
        roost_bytes_per_conn=getattr(args, "roost_bytes", ROOST_BYTES_PER_CONN_DEFAULT),
        worker_base_bytes=getattr(args, "worker_bytes", WORKER_BASE_BYTES_DEFAULT),
    )
    out = Console(stderr=bool(args.json), width=_width(args.json))
    status = report.exit_code
    if getattr(args, "write_sysctl", None):
        path = Path(args.write_sysctl)
        command = (
            f"roost doctor --connections {target.connections} --workers {target.workers} "
            f"--write-sysctl {path}"
        )
        try:
            path.write_text(sysctl_file(report, command))
        except OSError as exc:
            out.print(f"roost doctor: cannot write {path}: {exc.strerror or exc}", markup=False)
            status = 2
        else:
            out.print(f"wrote {path}", markup=False)
    if args.json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        render(report, out)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="roost doctor", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
