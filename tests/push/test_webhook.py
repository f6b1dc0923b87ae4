"""roost.push.webhook without a server: the payload, the preview, the
signature, and the notifier's batching against a real local HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from typing import Any

import pytest

from roost.config import Settings
from roost.push.webhook import WebhookNotifier, payload, preview, sign
from roost.store.base import KIND_GROUP, KIND_MSG, KIND_RECEIPT, Item


def item(n: int, user: str = "bob", body: bytes = b'{"text":"hi"}', kind: int = KIND_MSG) -> Item:
    return Item(f"{n:020x}", user, kind, "alice", "g1" if kind == KIND_GROUP else None, n, body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"text":"hi"}', "hi"),
        (b'{"text":"' + "é".encode() * 101 + b'"}', "é" * 100),
        (b'{"text":"\\ud83d\\ude00 x"}', "\U0001f600 x"),
        (b'{"other":1}', None),
        (b'{"text":5}', None),
        (b'{"text":null}', None),
        (b'"just a string"', None),
        (b"[1,2]", None),
        (b"1", None),
        (b"[" * 10000 + b"]" * 10000, None),
    ],
)
def test_preview(body, expected):
    assert preview(body) == expected


def test_payload_and_signature():
    body = payload("bob", [item(1), item(2, kind=KIND_GROUP, body=b"[]")])
    assert json.loads(body) == {
        "user": "bob",
        "items": [
            {"id": f"{1:020x}", "from": "alice", "group": None, "ts": 1, "preview": "hi"},
            {"id": f"{2:020x}", "from": "alice", "group": "g1", "ts": 2, "preview": None},
        ],
    }
    assert sign(b"k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


class Gateway:
    """A minimal HTTP/1.1 server on asyncio streams: records bodies, answers 200."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.statuses: list[int] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            self.bodies.append(json.loads(await reader.readexactly(length)))
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()


async def notifier_with(gateway: Gateway, online: set[str], **settings: Any):  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(gateway.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    options = {"push_window": 0.1, "push_backoff": 0.01, **settings}
    config = Settings(push_webhook=f"http://127.0.0.1:{port}/", **options)
    notifier = WebhookNotifier(config, b"secret", online.__contains__)
    notifier.start()
    return server, notifier


async def test_batching_online_check_and_confirms():
    gateway = Gateway()
    online: set[str] = set()
    server, notifier = await notifier_with(gateway, online)
    try:
        for n in range(5):
            notifier.notify(item(n))  # one burst for bob
        notifier.notify(item(9, user="carol"))
        notifier.notify(item(10, user="dave"))
        notifier.notify(item(11, user="erin", kind=KIND_RECEIPT))  # receipts are not pushed
        notifier.confirmed("carol", [f"{9:020x}"])  # confirmed before it left
        online.add("dave")  # online when it leaves
        notifier.confirmed("bob", [f"{2:020x}", "unknown"])
        await asyncio.sleep(0.4)
        assert [b["user"] for b in gateway.bodies] == ["bob"]
        assert [i["ts"] for i in gateway.bodies[0]["items"]] == [0, 1, 3, 4]
        assert notifier.sent == 1 and notifier.dropped == 0
    finally:
        await notifier.close()
        server.close()


async def test_retries_then_drops():
    gateway = Gateway()
    gateway.statuses = [503, 429, 200, 500, 500, 500]
    server, notifier = await notifier_with(gateway, set(), push_retries=2)
    try:
        notifier.notify(item(1))
        await asyncio.sleep(0.4)
        assert len(gateway.bodies) == 3 and notifier.sent == 1 and notifier.failed == 2
        notifier.notify(item(2))
        await asyncio.sleep(0.4)
        assert len(gateway.bodies) == 6 and notifier.dropped == 1 and notifier.failed == 5
    finally:
        await notifier.close()
        server.close()


async def test_too_many_users_waiting_are_dropped(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr("roost.push.webhook.MAX_USERS", 3)
    gateway = Gateway()
    server, notifier = await notifier_with(gateway, set(), push_window=0.2)
    try:
        for n in range(5):
            notifier.notify(item(n, user=f"u{n}"))
        assert notifier.dropped == 2
        await asyncio.sleep(0.5)
        assert sorted(b["user"] for b in gateway.bodies) == ["u0", "u1", "u2"]
    finally:
        await notifier.close()
        server.close()
