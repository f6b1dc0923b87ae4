"""Group fan-out: how fast a message reaches a big group, and what it costs everyone else.

Starts a server, makes a group of ``--members`` users (10,000 by default)
through the backend API, connects ``--online`` of them plus a sender and a
pair of unrelated users, and then:

- the pair exchanges 1:1 messages at ``--probe-rate`` per second all along,
  and the time from each send to its ack (committed) is recorded;
- after a quiet baseline, the sender sends ``--messages`` group messages,
  one after the other; for each, the time to its ack (the message is then
  committed in every member's inbox) and to the last online member's
  delivery are recorded.

It prints member deliveries per second (members / time to the ack), and the
probe's ack latency at rest and during the fan-outs: fan-out must not stall
other traffic.

    python bench/group_fanout.py
    python bench/group_fanout.py --members 10000 --online 5000 --workers 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    import roost  # noqa: F401
except ImportError:  # running from a checkout without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import httpx

from roost.auth import issue_token
from roost.bench.loadgen import Conn, Engine, Target, default_source_ips
from roost.bench.report import percentiles
from roost.bench.spawn import Server

GROUP = "bench-group"


class Scenario:
    """The loadgen handler: counts deliveries, times acks."""

    def __init__(self, engine: Engine | None, members: int) -> None:
        self.engine = engine
        self.members = members
        self.open = 0
        self.failed: list[str] = []
        self.group_sent_at: dict[str, float] = {}  # cid -> when sent
        self.group_acked_at: dict[str, float] = {}
        self.delivered: dict[str, int] = {}  # group message body tag -> online deliveries
        self.last_delivery: dict[str, float] = {}
        self.probe_sent: dict[str, float] = {}
        self.probe_latency: list[tuple[float, int]] = []  # (sent at, ack latency in µs)

    def on_open(self, conn: Conn, now: float) -> None:
        self.open += 1

    def on_fail(self, conn: Conn, reason: str, now: float) -> None:
        self.failed.append(reason)

    def on_close(self, conn: Conn, reason: str, now: float) -> None:
        self.failed.append(reason)

    def on_turn(self, now: float) -> None:
        pass

    def on_text(self, conn: Conn, payload: bytes, now: float) -> None:
        frame = json.loads(payload)
        op = frame["op"]
        if op == "msg" and frame.get("group") == GROUP:
            tag = frame["body"]
            self.delivered[tag] = self.delivered.get(tag, 0) + 1
            self.last_delivery[tag] = now
        elif op == "ack":
            cid = frame["cid"]
            if cid in self.probe_sent:
                sent = self.probe_sent.pop(cid)
                self.probe_latency.append((sent, int((now - sent) * 1e6)))
            else:
                self.group_acked_at[cid] = now
        elif op == "error":
            raise SystemExit(f"error from the server: {frame}")


def build_group(http: str, key: str, members: list[str]) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=http, headers=headers, timeout=60) as client:
        client.put(f"/api/groups/{GROUP}", json={"members": []}).raise_for_status()
        for start in range(0, len(members), 2000):
            add = {"add": members[start : start + 2000]}
            client.post(f"/api/groups/{GROUP}/members", json=add).raise_for_status()


def run(args: argparse.Namespace) -> dict[str, Any]:
    members = [f"member{i}" for i in range(args.members)]
    extra = ("--fsync", args.fsync, "--rate-limit", "0", "--inbox-cap", "1000000")
    with Server("roost", workers=args.workers, extra_args=extra) as server:
        key = (server.data_dir / "api-key").read_text().strip()
        http = f"http://127.0.0.1:{server.port}"
        started = time.monotonic()
        build_group(http, key, members)
        print(f"group of {args.members} built in {time.monotonic() - started:.1f} s")
        scenario = Scenario(None, args.members)
        engine = Engine(
            Target.from_url(server.url),
            lambda user: issue_token(server.secret, user),
            scenario,
        )
        scenario.engine = engine
        online = members[1 : 1 + args.online]
        ips = default_source_ips(len(online) + 3)
        sender = Conn(0, members[0], ips[0])
        probe_a = Conn(1, "probe-a", ips[0])
        probe_b = Conn(2, "probe-b", ips[0])
        conns = [sender, probe_a, probe_b] + [
            Conn(3 + i, user, ips[(3 + i) % len(ips)]) for i, user in enumerate(online)
        ]
        engine.ramp(conns, 5000, time.monotonic())
        deadline = time.monotonic() + 120
        while scenario.open < len(conns):
            engine.poll(0.05)
            if scenario.failed or time.monotonic() > deadline:
                raise SystemExit(f"connections failed: {scenario.failed[:5]}")
        print(f"{len(conns)} connections open")

        probe_every = 1.0 / args.probe_rate
        next_probe = time.monotonic()
        probes = 0

        def turn() -> None:
            nonlocal next_probe, probes
            now = time.monotonic()
            while now >= next_probe:
                cid = f"p{probes}"
                probes += 1
                scenario.probe_sent[cid] = now
                body = json.dumps({"op": "send", "to": "probe-b", "cid": cid, "body": probes})
                engine.send(probe_a, body.encode())
                next_probe += probe_every
            engine.poll(min(0.005, max(0.0, next_probe - now)))

        baseline_end = time.monotonic() + args.baseline
        while time.monotonic() < baseline_end:
            turn()
        windows: list[tuple[float, float]] = []
        results = []
        for n in range(args.messages):
            cid = f"g{n}"
            tag = f"m{n}"
            body = json.dumps({"op": "send", "group": GROUP, "cid": cid, "body": tag})
            sent = time.monotonic()
            engine.send(sender, body.encode())
            scenario.group_sent_at[cid] = sent
            while cid not in scenario.group_acked_at or scenario.delivered.get(tag, 0) < len(
                online
            ):
                turn()
                if time.monotonic() - sent > 120:
                    raise SystemExit(f"group message {n} not done after 120 s")
            acked = scenario.group_acked_at[cid] - sent
            last = scenario.last_delivery[tag] - sent if online else 0.0
            windows.append((sent, sent + max(acked, last)))
            results.append({"ack_s": acked, "last_online_delivery_s": last})
            print(
                f"message {n}: acked after {acked * 1000:.0f} ms "
                f"({(args.members - 1) / acked:,.0f} member deliveries/s), "
                f"last online member after {last * 1000:.0f} ms"
            )
            gap_end = time.monotonic() + args.gap
            while time.monotonic() < gap_end:
                turn()
        while scenario.probe_sent and time.monotonic() < next_probe + 5:
            engine.poll(0.01)

    def during(t: float) -> bool:
        return any(a <= t <= b for a, b in windows)

    rest = [lat for t, lat in scenario.probe_latency if t < windows[0][0]]
    busy = [lat for t, lat in scenario.probe_latency if during(t)]
    acks = [r["ack_s"] for r in results]
    summary = {
        "members": args.members,
        "online": args.online,
        "workers": args.workers,
        "fsync": args.fsync,
        "messages": results,
        "member_deliveries_per_s": (args.members - 1) * len(acks) / sum(acks),
        "probe_ack_ms_at_rest": percentiles(rest, 1e-3),
        "probe_ack_ms_during_fanout": percentiles(busy, 1e-3),
        "probe_count": {"at_rest": len(rest), "during_fanout": len(busy)},
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--online", type=int, default=5_000, help="members connected")
    parser.add_argument("--messages", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fsync", default="full", choices=("full", "normal"))
    parser.add_argument("--probe-rate", type=float, default=200.0, help="1:1 sends per second")
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds of probe alone")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between group messages")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    args.online = min(args.online, args.members - 1)
    load = os.getloadavg()[0]
    if load > 1.5:
        print(f"warning: load average {load:.1f}: the machine is busy, figures will be noisy")
    summary = run(args)
    summary["load_average_at_start"] = load
    rest, busy = summary["probe_ack_ms_at_rest"], summary["probe_ack_ms_during_fanout"]
    print(
        f"\n{args.members} members ({args.online} online), {args.workers} workers, "
        f"fsync={args.fsync}: {summary['member_deliveries_per_s']:,.0f} member deliveries/s"
    )
    if rest and busy:
        print(
            "unrelated 1:1 ack latency, ms: "
            f"at rest p50 {rest['p50']:.1f} p99 {rest['p99']:.1f} max {rest['max']:.1f}; "
            f"during fan-out p50 {busy['p50']:.1f} p99 {busy['p99']:.1f} max {busy['max']:.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
