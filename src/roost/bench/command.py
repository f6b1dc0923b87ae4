"""``roost bench``: the command line of the load generator.

    roost bench idle  --connections N [--rate R] [--hold S]
    roost bench relay --connections N --duration S [--rate R|max] [--message-bytes B]
    roost bench storm --connections N [--inbox K] [--jitter S]

Common options pick the server (``--url``, or ``--spawn-server --target T``),
the load generator's shape (``--processes``, ``--source-ips``) and the outputs
(``--json``, ``--plot``). Exit status: 0 for a clean run, 1 when messages were
lost or duplicated or nothing connected, 2 for bad options.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from roost.auth import load_secret
from roost.bench import report
from roost.bench.loadgen import Target, default_source_ips, parse_source_ips
from roost.bench.meter import ServerProbe, listener_pids
from roost.bench.runner import Display, execute
from roost.bench.scenarios import Plan
from roost.bench.spawn import TARGETS, Server
from roost.errors import ConfigError, RoostError

CONNECTIONS_PER_PROCESS = 15_000
"""Default connections per load-generator process: under RLIMIT_NOFILE (20,000
here) with room for the process's own files."""


def add_parser(subparsers: Any) -> None:
    """Add ``bench`` and its scenarios to an argparse subparsers object."""
    bench = subparsers.add_parser(
        "bench",
        help="load-test roost or a peer server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(bench)
    bench.set_defaults(func=run)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the scenario subcommands and their options to ``parser``."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("server")
    g.add_argument(
        "--url", default="ws://127.0.0.1:8080/ws", help="server to load (default %(default)s)"
    )
    g.add_argument(
        "--spawn-server", action="store_true", help="start a fresh server with a temporary data dir"
    )
    g.add_argument(
        "--workers", type=int, default=None, help="with --spawn-server: roost worker processes"
    )
    g.add_argument(
        "--target", default="roost", choices=TARGETS, help="what serves --url, or what to spawn"
    )
    g.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the spawned server",
    )
    g.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="measure this local server process and its children (default: the port's listener)",
    )
    g.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the server's data dir, whose secret signs tokens",
    )
    g.add_argument(
        "--secret-file", type=Path, default=None, help="the server's secret, to sign tokens"
    )
    g = common.add_argument_group("load generator")
    g.add_argument(
        "--connections", type=int, default=1000, help="connections to open (default %(default)s)"
    )
    g.add_argument(
        "--processes",
        type=int,
        default=None,
        help=f"load-generator processes (default: one per {CONNECTIONS_PER_PROCESS:,} connections)",
    )
    g.add_argument(
        "--source-ips",
        default=None,
        help="source addresses, e.g. 127.0.0.2-127.0.0.80 (default for a loopback target: "
        "127.1.x.y, one per 2,000 connections; 'none' lets the kernel choose)",
    )
    g.add_argument("--max-pending", type=int, default=512, help="handshakes in flight per process")
    g.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="open and close N connections before measuring (one-time growth stays out)",
    )
    g.add_argument("--handshake-timeout", type=float, default=10.0, help="seconds")
    g = common.add_argument_group("output")
    g.add_argument(
        "--json", type=Path, default=None, metavar="PATH", help="write every figure to PATH"
    )
    g.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PATH.png",
        help="draw connections, memory and latency over time (needs matplotlib)",
    )
    g.add_argument("--quiet", action="store_true", help="no live display and no summary table")

    sub = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    p = sub.add_parser(
        "idle", parents=[common], help="open N authenticated connections and hold them"
    )
    p.add_argument(
        "--rate", type=float, default=0, help="connects per second (default: as fast as allowed)"
    )
    p.add_argument("--hold", type=float, default=10.0, help="seconds to hold (default %(default)s)")

    p = sub.add_parser("relay", parents=[common], help="1:1 messages between connected users")
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds of sending (default %(default)s)"
    )
    p.add_argument("--rate", default="max", help="messages per second in total, or 'max' (default)")
    p.add_argument("--message-bytes", type=int, default=64, help="body size (default %(default)s)")
    p.add_argument(
        "--window", type=int, default=16, help="unacked sends per connection (default %(default)s)"
    )
    p.add_argument(
        "--drain",
        type=float,
        default=10.0,
        help="seconds to wait for outstanding acks and deliveries (default %(default)s)",
    )
    p.add_argument(
        "--connect-rate", type=float, default=0, help="connects per second during the ramp"
    )

    p = sub.add_parser(
        "storm", parents=[common], help="everyone disconnects at once and reconnects"
    )
    p.add_argument(
        "--inbox", type=int, default=1, help="unconfirmed items per user before the storm"
    )
    p.add_argument(
        "--jitter", type=float, default=2.0, help="reconnects spread over this many seconds"
    )
    p.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="give up waiting for reconnects and redelivery after this many seconds",
    )
    p.add_argument("--message-bytes", type=int, default=64, help="body size (default %(default)s)")
    p.add_argument(
        "--connect-rate", type=float, default=0, help="connects per second during the ramp"
    )


def _secret(args: argparse.Namespace) -> bytes:
    if args.secret_file is not None or os.environ.get("ROOST_SECRET"):
        return load_secret(args.data_dir or Path("."), args.secret_file)
    data_dir = args.data_dir or Path("roost-data")
    if not (data_dir / "secret").exists():
        raise ConfigError(
            f"no secret at {data_dir / 'secret'}: pass the server's --data-dir or --secret-file, "
            "or use --spawn-server"
        )
    return load_secret(data_dir)


def _rate(value: str) -> float:
    if value == "max":
        return 0.0
    try:
        rate = float(value)
    except ValueError:
        raise ConfigError(f"--rate must be a number or 'max', not {value!r}") from None
    if rate <= 0:
        raise ConfigError("--rate must be positive")
    return rate


def make_plan(args: argparse.Namespace, url: str, secret: bytes) -> Plan:
    n = args.connections
    if n < 1:
        raise ConfigError("--connections must be at least 1")
    processes = args.processes or max(1, math.ceil(n / CONNECTIONS_PER_PROCESS))
    if processes < 1:
        raise ConfigError("--processes must be at least 1")
    target = Target.from_url(url)
    if args.source_ips == "none":
        ips: list[str] = []
    elif args.source_ips:
        ips = parse_source_ips(args.source_ips)
    else:
        ips = default_source_ips(n) if target.is_loopback else []
    scenario = args.scenario
    return Plan(
        scenario=scenario,
        url=url,
        secret=secret,
        run_id="b" + secrets.token_hex(3),
        connections=n,
        processes=min(processes, n),
        source_ips=tuple(ips),
        connect_rate=args.rate if scenario == "idle" else args.connect_rate,
        message_rate=_rate(args.rate) if scenario == "relay" else 0.0,
        window=max(1, getattr(args, "window", 1)),
        message_bytes=getattr(args, "message_bytes", 64),
        drain=getattr(args, "drain", 0.0),
        inbox=getattr(args, "inbox", 0),
        jitter=getattr(args, "jitter", 0.0),
        max_pending=args.max_pending,
        handshake_timeout=args.handshake_timeout,
    )


@contextlib.contextmanager
def _display(enabled: bool) -> Iterator[Display | None]:
    if not enabled:
        yield None
        return
    with Live(console=Console(stderr=True), refresh_per_second=4, transient=True) as live:

        def update(phase: str, totals: dict[str, Any]) -> None:
            live.update(report.progress_table(phase, totals))

        yield update


def run(args: argparse.Namespace) -> int:
    """Run the scenario ``args`` describe; print and write its figures."""
    console = Console()
    try:
        if args.workers is not None and not args.spawn_server:
            raise ConfigError("--workers needs --spawn-server")
        with contextlib.ExitStack() as stack:
            if args.spawn_server:
                server = stack.enter_context(
                    Server(
                        args.target,
                        workers=args.workers,
                        data_dir=args.data_dir,
                        extra_args=tuple(args.server_arg),
                    )
                )
                url, secret, pids = server.url, server.secret, [server.pid]
            else:
                url, secret = args.url, _secret(args)
                pids = args.server_pid
            plan = make_plan(args, url, secret)
            if args.warmup:
                # Open and close some connections first, so that one-time
                # growth (allocator arenas, caches, every worker's first
                # handoff) is in the baseline, not in the per-connection figure.
                warmup = dataclasses.replace(
                    plan,
                    scenario="idle",
                    connections=args.warmup,
                    processes=1,
                    run_id=plan.run_id + "w",
                )
                execute(warmup, hold=0.1)
            target = Target.from_url(url)
            local = target.is_loopback
            if local and not pids:
                pids = listener_pids(target.port)
            probe = ServerProbe(pids) if local and pids else None
            live = not args.quiet and sys.stderr.isatty()
            with _display(live) as display:
                hold = getattr(args, "hold", 0.0)
                outcome = execute(
                    plan,
                    hold=hold,
                    duration=getattr(args, "duration", 0.0),
                    probe=probe,
                    kernel=local,
                    display=display,
                )
        extra = {"command": "roost " + " ".join(sys.argv[1:]) if sys.argv else None}
        if args.spawn_server:
            extra["server_command"] = " ".join(server.command)
        result = report.build(outcome, args.target, extra)
    except RoostError as exc:
        console.print(f"[red]roost bench: {exc}[/red]")
        return 2
    if args.json is not None:
        report.write_json(result, args.json)
    if args.plot is not None:
        try:
            report.plot(result, args.plot)
        except RuntimeError as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
    if not args.quiet:
        report.print_summary(result, console)
    bad = (result["loss"] or 0) > 0 or (result["duplicates"] or 0) > 0 or result["connected"] == 0
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="roost bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
