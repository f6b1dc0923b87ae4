"""Push notifications end to end: a real roost server and a real local HTTP
server as the push gateway, which can fail, time out and recover."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from roost.workers.routing import owner_of

TIMEOUT = 15
FAST = ("--push-window", "0.2", "--push-backoff", "0.05", "--push-timeout", "0.5")


class Gateway:
    """A push gateway on 127.0.0.1: records every request and answers from a
    script, one entry per request (a status code, or "slow": answer after
    the client's timeout), then 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.script: list[int | str] = []
        self.lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with gateway.lock:
                    gateway.requests.append((time.monotonic(), dict(self.headers), body))
                    action = gateway.script.pop(0) if gateway.script else 200
                if action == "slow":
                    time.sleep(1.0)
                    action = 200
                self.send_response(int(action))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/push"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, _, body in self.requests]

    def wait(self, count: int, limit: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + limit
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} requests came"
            time.sleep(0.02)
        return self.bodies()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    g = Gateway()
    yield g
    g.close()


def open_ws(server, user: str) -> Any:  # type: ignore[no-untyped-def]
    return connect(server.ws_url(user), compression=None, open_timeout=TIMEOUT)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def send(ws: ClientConnection, to: str, body: Any, cid: str = "c") -> dict[str, Any]:
    await ws.send(json.dumps({"op": "send", "to": to, "cid": cid, "body": body}))
    ack = await recv(ws)
    assert ack["op"] == "ack", ack
    return ack


def metric(server, name: str) -> int:  # type: ignore[no-untyped-def]
    for line in httpx.get(f"{server.http}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    raise AssertionError(f"no {name}")


def wait_metric(server, name: str, value: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10  # stats are published every 0.5 s
    while metric(server, name) != value:
        assert time.monotonic() < deadline, f"{name} is {metric(server, name)}, not {value}"
        time.sleep(0.05)


async def test_a_burst_for_an_offline_user_is_one_signed_notification(make_server, gateway):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3", "--push-webhook", gateway.url, *FAST)
    secret = (server.data_dir / "push-secret").read_bytes().strip()
    assert (server.data_dir / "push-secret").stat().st_mode & 0o777 == 0o600
    long_text = "é" * 150
    bodies = [{"text": "hi"}, {"text": long_text}, [1, 2], {"text": 5}, "plain"]
    async with open_ws(server, "alice") as alice:
        acks = [await send(alice, "bob", body, f"c{i}") for i, body in enumerate(bodies)]
        [notification] = await asyncio.to_thread(gateway.wait, 1)
    assert notification == {
        "user": "bob",
        "items": [
            {"id": ack["id"], "from": "alice", "group": None, "ts": ack["ts"], "preview": p}
            for ack, p in zip(acks, ["hi", "é" * 100, None, None, None], strict=True)
        ],
    }
    _, headers, raw = gateway.requests[0]
    expected = "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
    assert headers["X-Roost-Signature"] == expected
    assert headers["Content-Type"] == "application/json"
    await asyncio.sleep(0.5)
    assert len(gateway.requests) == 1  # one burst, one notification
    await asyncio.to_thread(wait_metric, server, "roost_push_sent_total", 1)


async def test_no_push_for_an_online_user_nor_for_receipts(make_server, gateway):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3", "--push-webhook", gateway.url, *FAST)
    users = [f"online{i}" for i in range(6)]
    assert len({owner_of(u, 3) for u in users}) == 3
    conns = {u: await open_ws(server, u) for u in users}
    for i, user in enumerate(users):
        sender = users[(i + 1) % len(users)]
        await conns[sender].send(
            json.dumps({"op": "send", "to": user, "cid": "x", "body": {"text": "hi"}})
        )
    for user in users:
        frames = [await recv(conns[user]) for _ in range(2)]  # its ack and its msg
        msg = next(f for f in frames if f["op"] == "msg")
        await conns[user].send(json.dumps({"op": "recv", "ids": [msg["id"]]}))
    for user in users[:3]:
        await conns[user].close()  # receipts for them will be stored while offline
    await asyncio.sleep(1.0)
    assert gateway.requests == []
    for user in users[3:]:
        await conns[user].close()


async def test_retried_with_backoff_until_the_gateway_recovers(make_server, gateway):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "2", "--push-webhook", gateway.url, *FAST)
    gateway.script = [503, 500, "slow", 502]  # fails four times, then recovers
    async with open_ws(server, "alice") as alice:
        ack = await send(alice, "bob", {"text": "are you there?"})
        bodies = await asyncio.to_thread(gateway.wait, 5)
    assert all(body == bodies[0] for body in bodies)  # the same notification, again
    assert bodies[0]["items"][0]["id"] == ack["id"]
    times = [t for t, _, _ in gateway.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 0.05, 0.1, 0.2 (+0.5 timeout), 0.4 seconds, each with ±20% jitter
    assert gaps[0] >= 0.035 and gaps[1] >= 0.075 and gaps[3] >= 0.3
    await asyncio.to_thread(wait_metric, server, "roost_push_sent_total", 1)
    assert metric(server, "roost_push_failed_total") == 4
    assert metric(server, "roost_push_dropped_total") == 0
    await asyncio.sleep(0.3)
    assert len(gateway.requests) == 5


async def test_dropped_after_the_retries_with_a_log_line(make_server, gateway):  # type: ignore[no-untyped-def]
    server = make_server(
        "--workers", "2", "--push-webhook", gateway.url, "--push-retries", "2", *FAST
    )
    gateway.script = [500] * 10
    async with open_ws(server, "alice") as alice:
        await send(alice, "bob", {"text": "hello"})
        await asyncio.to_thread(gateway.wait, 3)
    await asyncio.to_thread(wait_metric, server, "roost_push_dropped_total", 1)
    assert metric(server, "roost_push_failed_total") == 3
    await asyncio.sleep(0.3)
    assert len(gateway.requests) == 3  # the first try and two retries
    assert "push for bob dropped (status 500)" in server.log.read_text()
    # The message itself is safe in the inbox.
    async with open_ws(server, "bob") as bob:
        assert (await recv(bob))["body"] == {"text": "hello"}


async def test_a_4xx_is_not_retried_and_a_dead_gateway_is(make_server, gateway):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "2", "--push-webhook", gateway.url, *FAST)
    gateway.script = [400]
    async with open_ws(server, "alice") as alice:
        await send(alice, "bob", 1)
        await asyncio.to_thread(wait_metric, server, "roost_push_dropped_total", 1)
        assert len(gateway.requests) == 1
    # Nothing listening at all: connection errors are retried, then dropped.
    dead = make_server(
        "--workers", "2", "--push-webhook", "http://127.0.0.1:9/push", *FAST, "--push-retries", "1"
    )
    async with open_ws(dead, "alice") as alice:
        await send(alice, "bob", 1)
    await asyncio.to_thread(wait_metric, dead, "roost_push_dropped_total", 1)
    assert metric(dead, "roost_push_failed_total") == 2


async def test_items_confirmed_before_the_push_left_are_left_out(make_server, gateway):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3", "--push-webhook", gateway.url, "--push-window", "1.5")
    async with open_ws(server, "alice") as alice:
        first = await send(alice, "bob", {"text": "one"}, "1")
        second = await send(alice, "bob", {"text": "two"}, "2")
        # bob comes and goes within the window, confirming only the first.
        async with open_ws(server, "bob") as bob:
            assert (await recv(bob))["id"] == first["id"]
            assert (await recv(bob))["id"] == second["id"]
            await bob.send(json.dumps({"op": "recv", "ids": [first["id"]]}))
            receipt = await recv(alice)
            assert receipt["op"] == "receipt"
            await alice.send(json.dumps({"op": "recv", "ids": [receipt["id"]]}))
        [notification] = await asyncio.to_thread(gateway.wait, 1)
    assert [item["id"] for item in notification["items"]] == [second["id"]]
    # All confirmed in the window: nothing goes out.
    async with open_ws(server, "alice") as alice:
        third = await send(alice, "carol", {"text": "three"})
        async with open_ws(server, "carol") as carol:
            await recv(carol)
            await carol.send(json.dumps({"op": "recv", "ids": [third["id"]]}))
            await recv(alice)
        await asyncio.sleep(2.0)
    assert len(gateway.requests) == 1


async def test_no_push_for_a_user_who_comes_online_in_the_window(make_server, gateway):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "2", "--push-webhook", gateway.url, "--push-window", "1.0")
    async with open_ws(server, "alice") as alice:
        await send(alice, "bob", {"text": "one"})
        async with open_ws(server, "bob") as bob:
            await recv(bob)
            await asyncio.sleep(1.5)  # online when the window closes
    assert gateway.requests == []


async def test_group_messages_to_offline_members(make_server, gateway):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3", "--push-webhook", gateway.url, *FAST)
    key = (server.data_dir / "api-key").read_text().strip()
    members = ["gm0", "gm1", "gm2", "gm3", "gm4"]
    response = httpx.put(
        f"{server.http}/api/groups/club",
        json={"members": members},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200
    async with open_ws(server, "gm0") as sender, open_ws(server, "gm1") as online:
        await sender.send(
            json.dumps({"op": "send", "group": "club", "cid": "g", "body": {"text": "yo"}})
        )
        ack = await recv(sender)
        assert ack["op"] == "ack"
        assert (await recv(online))["group"] == "club"
        bodies = await asyncio.to_thread(gateway.wait, 3)
    assert sorted(b["user"] for b in bodies) == ["gm2", "gm3", "gm4"]
    for body in bodies:
        [item] = body["items"]
        assert (item["from"], item["group"], item["preview"]) == ("gm0", "club", "yo")


def test_push_secret_from_a_file_or_the_environment(make_server, gateway, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    key_file = tmp_path / "push-key"
    key_file.write_text("file-secret\n")
    for args, secret in (
        (("--push-secret-file", str(key_file)), b"file-secret"),
        ((), b"env-secret"),
    ):
        if not args:
            monkeypatch.setenv("ROOST_PUSH_SECRET", "env-secret")
        gateway.requests.clear()
        server = make_server("--workers", "2", "--push-webhook", gateway.url, *FAST, *args)
        key = (server.data_dir / "api-key").read_text().strip()
        httpx.post(
            f"{server.http}/api/send",
            json={"from": "system", "to": "someone", "body": {"text": "x"}},
            headers={"Authorization": f"Bearer {key}"},
        )
        gateway.wait(1)
        _, headers, raw = gateway.requests[0]
        expected = "sha256=" + hmac.new(secret, raw, hashlib.sha256).hexdigest()
        assert headers["X-Roost-Signature"] == expected
        assert not (server.data_dir / "push-secret").exists()
