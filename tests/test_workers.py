"""The multi-worker engine: ownership, handoff, links, restarts, slow readers,
metrics. Every test runs a real supervisor with several worker processes."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from rawws import RawWS, upgrade_request
from roost.proto.frames import OP_TEXT, encode_frame
from roost.workers.routing import owner_of

TIMEOUT = 15


def open_ws(server, user: str) -> Any:  # type: ignore[no-untyped-def]
    return connect(server.ws_url(user), compression=None, open_timeout=TIMEOUT, max_queue=None)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


def stats(server) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return httpx.get(f"{server.http}/api/stats", timeout=5).json()


def wait_for(predicate, what: str, limit: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


async def test_random_pairs_across_workers_exactly_once_in_order(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "4")
    users = [f"u{i}" for i in range(24)]
    assert len({owner_of(u, 4) for u in users}) == 4  # every worker owns someone
    rng = random.Random(7)
    plan = [(rng.choice(users), rng.choice(users)) for _ in range(600)]
    conns = {u: await open_ws(server, u) for u in users}
    acks: dict[str, str] = {}  # cid -> message id
    sent_to: dict[str, list[str]] = {u: [] for u in users}  # recipient -> cids in send order

    async def sender(user: str) -> None:
        mine = [(i, to) for i, (frm, to) in enumerate(plan) if frm == user]
        for i, to in mine:
            await conns[user].send(
                json.dumps({"op": "send", "to": to, "cid": f"c{i}", "body": {"i": i}})
            )

    await asyncio.gather(*(sender(u) for u in users))
    for frm, to in plan:
        sent_to[to].append(frm)
    received: dict[str, list[dict[str, Any]]] = {u: [] for u in users}
    receipts: dict[str, set[str]] = {u: set() for u in users}
    expected_msgs = {u: sum(1 for _, to in plan if to == u) for u in users}
    expected_acks = {u: sum(1 for frm, _ in plan if frm == u) for u in users}
    expected_receipts = expected_acks

    async def reader(user: str) -> None:
        ws = conns[user]
        my_acks = 0
        while (
            len(received[user]) < expected_msgs[user]
            or my_acks < expected_acks[user]
            or len(receipts[user]) < expected_receipts[user]
        ):
            frame = await recv(ws)
            if frame["op"] == "ack":
                acks[frame["cid"]] = frame["id"]
                my_acks += 1
            elif frame["op"] == "msg":
                received[user].append(frame)
                await ws.send(json.dumps({"op": "recv", "ids": [frame["id"]]}))
            elif frame["op"] == "receipt":
                receipts[user].add(frame["ref"])
                await ws.send(json.dumps({"op": "recv", "ids": [frame["id"]]}))
            else:
                raise AssertionError(frame)

    await asyncio.gather(*(reader(u) for u in users))
    for user in users:
        ids = [m["id"] for m in received[user]]
        assert ids == sorted(ids), f"{user}'s messages out of order"
        assert len(set(ids)) == len(ids), f"{user} got a message twice"
    all_received = sorted(m["id"] for msgs in received.values() for m in msgs)
    assert all_received == sorted(acks.values())
    # Every sender got a receipt for every message it sent.
    for user in users:
        mine = {acks[f"c{i}"] for i, (frm, _) in enumerate(plan) if frm == user}
        assert receipts[user] == mine
    for ws in conns.values():
        await ws.close()

    def handoffs_published() -> bool:
        totals = stats(server)["totals"]
        return totals["handshakes_adopted"] == totals["handshakes_handed_off"] > 0

    await asyncio.to_thread(wait_for, handoffs_published, "handoff counts")


def test_handoff_carries_the_bytes_already_read(make_server):  # type: ignore[no-untyped-def]
    """A client that pipelines frames behind its upgrade request, on whatever
    worker accepts it: the owner gets those bytes with the socket."""
    server = make_server("--workers", "4")
    for n in range(12):
        user = f"pipeliner{n}"
        frames = b"".join(
            encode_frame(
                OP_TEXT,
                json.dumps({"op": "send", "to": user, "cid": f"p{k}", "body": k}).encode(),
                mask_key=os.urandom(4),
            )
            for k in range(3)
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(upgrade_request(f"/ws?token={server.token(user)}") + frames)
            data = b""
            while data.count(b'"op":"msg"') < 3:
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
        assert data.startswith(b"HTTP/1.1 101 ")
        for k in range(3):
            assert f'"cid":"p{k}"'.encode() in data
    wait_for(lambda: stats(server)["totals"]["handshakes_handed_off"] > 0, "a handoff")


async def test_replacement_across_workers(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "4")
    for n in range(6):
        user = f"twice{n}"
        first = await open_ws(server, user)
        second = await open_ws(server, user)
        with pytest.raises(ConnectionClosed):
            await recv(first)
        assert first.close_code == 4001
        await second.send(json.dumps({"op": "send", "to": user, "cid": "s", "body": 1}))
        assert (await recv(second))["op"] == "ack"
        await second.close()


async def test_kill_9_of_a_worker_under_load_loses_nothing_acked(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3")
    senders = [f"s{i}" for i in range(6)]
    recipients = [f"r{i}" for i in range(6)]
    victim = owner_of(recipients[0], 3)
    acked: dict[str, set[str]] = {r: set() for r in recipients}
    stop = asyncio.Event()

    async def send_loop(user: str) -> None:
        n = 0
        while not stop.is_set():
            try:
                async with open_ws(server, user) as ws:
                    while not stop.is_set():
                        to = recipients[n % len(recipients)]
                        n += 1
                        await ws.send(
                            json.dumps({"op": "send", "to": to, "cid": f"{to}|{n}", "body": n})
                        )
                        frame = await recv(ws)
                        if frame["op"] == "ack":
                            acked[frame["cid"].split("|")[0]].add(frame["id"])
                        else:
                            assert frame["code"] == "internal", frame
            except (ConnectionClosed, OSError, TimeoutError):
                await asyncio.sleep(0.1)  # the sender's own worker died: reconnect

    tasks = [asyncio.create_task(send_loop(u)) for u in senders]
    await asyncio.sleep(1.0)
    pid = stats(server)["workers"][victim]["pid"]
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(
        wait_for,
        lambda: stats(server)["workers"][victim]["pid"] not in (0, pid),
        "the worker's restart",
    )
    await asyncio.sleep(1.0)  # load continues on the restarted worker
    stop.set()
    await asyncio.gather(*tasks)
    assert all(acked[r] for r in recipients)
    # Every recipient is back after reconnecting and has every acked message.
    # It may have more: a message can be stored while its ack dies with the
    # sender's worker; unacked, it is the sender's to resend (at least once).
    for recipient in recipients:
        async with open_ws(server, recipient) as ws:
            got: set[str] = set()
            while not acked[recipient] <= got:
                frame = await recv(ws)
                assert frame["op"] == "msg"
                got.add(frame["id"])


def test_slow_consumer_is_closed_4008_and_keeps_its_items(make_server):  # type: ignore[no-untyped-def]
    server = make_server(
        "--workers", "1", "--max-outbuf", "65536", "--close-timeout", "60", "--rate-limit", "0"
    )
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    slow.settimeout(TIMEOUT)
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(upgrade_request(f"/ws?token={server.token('sloth')}"))
    rss_before = stats(server)["workers"][0]["rss_bytes"]
    body = "x" * 4000
    sender = RawWS(server.port, server.token("pusher"))
    total = 3000  # 12 MB for a reader that reads nothing
    frames = [
        encode_frame(
            OP_TEXT,
            json.dumps({"op": "send", "to": "sloth", "cid": str(i), "body": body}).encode(),
            mask_key=b"\0\0\0\0",
        )
        for i in range(total)
    ]
    for start in range(0, total, 100):
        sender.send_raw(b"".join(frames[start : start + 100]))
        for _ in range(100):
            assert sender.recv_json()["op"] == "ack"
    wait_for(lambda: stats(server)["totals"]["slow_consumers"] == 1, "the slow-consumer close")
    rss_after = stats(server)["workers"][0]["rss_bytes"]
    # The cap is 64 KiB; 12 MB went to this reader. The worker held on to a
    # bounded amount, not the 12 MB.
    assert rss_after - rss_before < 8_000_000
    # Now it reads (with a window that lets it catch up quickly): what was
    # queued for it, then the 4008 close.
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
    reader = RawWS.__new__(RawWS)
    reader.sock, reader.buf = slow, b""
    from collections import deque

    reader.frames = deque()
    head = b""
    while b"\r\n\r\n" not in head:
        head += slow.recv(1)
    delivered = 0
    while True:
        opcode, payload = reader.recv_frame()
        if opcode == 0x8:
            assert int.from_bytes(payload[:2], "big") == 4008
            assert payload[2:] == b"slow consumer"
            break
        delivered += 1
    assert 0 < delivered < total
    slow.close()
    sender.close()
    # Nothing was lost: on a reconnect every one of the 3,000 comes.
    again = RawWS(server.port, server.token("sloth"))
    seen = 0
    while seen < total:
        assert again.recv_json()["op"] == "msg"
        seen += 1
    again.close()


def test_metrics_and_stats_sum_over_workers(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3")
    ws = RawWS(server.port, server.token("metered"))
    for i in range(5):
        ws.send_json({"op": "send", "to": f"m{i}", "cid": str(i), "body": i})
    for _ in range(5):
        assert ws.recv_json()["op"] == "ack"

    def published() -> bool:
        return stats(server)["totals"]["acks"] == 5

    wait_for(published, "stats publication")
    data = stats(server)
    assert len(data["workers"]) == 3
    assert all(w["pid"] > 0 and w["rss_bytes"] > 0 for w in data["workers"])
    assert data["totals"]["messages_in"] == 5
    assert data["totals"]["connections"] == 1
    text = httpx.get(f"{server.http}/metrics", timeout=5).text
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert lines["roost_acks_total"] == "5"
    assert lines["roost_messages_in_total"] == "5"
    assert lines["roost_connections"] == "1"
    upgrades = ("upgraded", "adopted")  # on the accepting worker, or on the owner after a handoff
    assert sum(int(lines[f'roost_handshakes_total{{outcome="{o}"}}']) for o in upgrades) == 1
    assert all(f'roost_worker_rss_bytes{{worker="{i}"}}' in lines for i in range(3))
    assert "# TYPE roost_acks_total counter" in text
    ws.close()


def test_preflight_warns_at_start(make_server):  # type: ignore[no-untyped-def]
    # RLIMIT_NOFILE is 20,000 here: a million connections on 2 workers cannot fit.
    server = make_server("--workers", "2", "--max-connections", "1000000")
    log = server.log.read_text()
    assert "warning: fail: RLIMIT_NOFILE" in log
    assert "Fix: --workers" in log


def test_a_connect_burst_over_the_accept_rate_waits_and_is_served(make_server):  # type: ignore[no-untyped-def]
    """The accept-rate limit defers connections to the kernel backlog; it
    refuses none."""
    server = make_server("--workers", "1", "--accept-rate", "10")
    clients = [RawWS(server.port, server.token(f"burst{i}")) for i in range(40)]
    assert all(c.status == 101 for c in clients)
    for client in clients:
        client.close()
    wait_for(lambda: stats(server)["totals"]["handshakes_upgraded"] == 40, "40 upgrades")
    assert stats(server)["totals"]["handshakes_overloaded"] == 0
