"""User-space bytes per idle authenticated WebSocket connection, on one server process.

The figure of the v1 budget (<= 512 bytes): open N connections (10,000 by
default), handshake and authentication done, nothing else sent; the server's
RSS growth (its process and children) divided by N. A warm-up of a few hundred
connections is opened and closed first, so one-time costs (imports, first
allocations) do not count as per-connection ones.

    python bench/idle_bytes.py --target roost
    python bench/idle_bytes.py --target peer:picows --json idle-picows.json
    python bench/idle_bytes.py --url ws://127.0.0.1:8080/ws --data-dir roost-data --server-pid PID
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
from pathlib import Path

try:
    import roost  # noqa: F401
except ImportError:  # running from a checkout without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from roost.auth import load_secret
from roost.bench import report
from roost.bench.loadgen import Target, default_source_ips
from roost.bench.meter import ServerProbe, listener_pids
from roost.bench.runner import execute
from roost.bench.scenarios import Plan
from roost.bench.spawn import TARGETS, Server


def plan(url: str, secret: bytes, connections: int) -> Plan:
    return Plan(
        scenario="idle",
        url=url,
        secret=secret,
        run_id="i" + secrets.token_hex(3),
        connections=connections,
        processes=1,
        source_ips=tuple(default_source_ips(connections)),
        connect_rate=0,
        message_rate=0,
        window=1,
        message_bytes=0,
        drain=0,
        inbox=0,
        jitter=0,
        max_pending=256,
        handshake_timeout=10.0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=TARGETS, default="roost")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument(
        "--warmup", type=int, default=200, help="connections opened and closed first"
    )
    parser.add_argument("--hold", type=float, default=2.0, help="seconds idle before measuring")
    parser.add_argument(
        "--url", default=None, help="measure a running server instead of spawning one"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("roost-data"))
    parser.add_argument("--secret-file", type=Path, default=None)
    parser.add_argument("--server-pid", type=int, action="append", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.connections > 19_000:
        parser.error("one load-generator process holds at most ~19,000 connections here")

    with contextlib.ExitStack() as stack:
        if args.url is None:
            # One server process: roost with --workers 1, a peer as it is.
            workers = 1 if args.target == "roost" else None
            server = stack.enter_context(Server(args.target, workers=workers))
            url, secret, pids = server.url, server.secret, [server.pid]
        else:
            url = args.url
            secret = load_secret(args.data_dir, args.secret_file)
            pids = args.server_pid or listener_pids(Target.from_url(url).port)
            if not pids:
                parser.error("no local process listens on that port; pass --server-pid")
        probe = ServerProbe(pids)
        if args.warmup:
            execute(plan(url, secret, args.warmup), hold=0.1)
        outcome = execute(
            plan(url, secret, args.connections), hold=args.hold, probe=probe, kernel=True
        )
    result = report.build(outcome, args.target)
    per_conn = result["server_bytes_per_conn"]
    print(
        f"{args.target}: {per_conn} user-space bytes per idle connection "
        f"(server RSS {result['server_rss_before'] / 2**20:.1f} -> "
        f"{result['server_rss_after'] / 2**20:.1f} MiB over {result['open_at_measure']:,} "
        f"connections; {result['failed'] or 'no'} failures; "
        f"kernel {result['kernel_bytes_per_conn']} bytes per connection pair)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["connected"] == args.connections else 1


if __name__ == "__main__":
    raise SystemExit(main())
