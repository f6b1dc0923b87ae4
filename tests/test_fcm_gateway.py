"""examples/fcm_gateway.py: the signature check, the FCM HTTP v1 bodies, and
the gateway behind a real roost server (it prints what it would send)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fcm_gateway.py"
spec = importlib.util.spec_from_file_location("fcm_gateway", EXAMPLE)
assert spec is not None and spec.loader is not None
fcm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fcm)

SECRET = b"s3cret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def signed(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def notification(*items: dict[str, Any]) -> dict[str, Any]:
    return {"user": "bob", "items": list(items)}


ITEM = {"id": "01a2", "from": "alice", "group": None, "ts": 17, "preview": "hi"}


def test_verify():
    body = b'{"user":"bob","items":[]}'
    assert fcm.verify(SECRET, body, signed(body))
    assert not fcm.verify(SECRET, body + b" ", signed(body))
    assert not fcm.verify(b"other", body, signed(body))
    assert not fcm.verify(SECRET, body, None)
    assert not fcm.verify(SECRET, body, signed(body).replace("sha256=", "sha1="))


def test_one_message_to_each_device():
    [android, ios] = fcm.to_fcm(notification(ITEM), ["tok1", "tok2"])
    assert android == {
        "message": {
            "token": "tok1",
            "notification": {"title": "alice", "body": "hi"},
            "data": {"user": "bob", "ids": "01a2", "from": "alice", "group": "", "ts": "17"},
            "android": {"priority": "HIGH", "collapse_key": "roost-bob"},
            "apns": {
                "headers": {"apns-priority": "10", "apns-collapse-id": "roost-bob"},
                "payload": {"aps": {"thread-id": "alice", "sound": "default"}},
            },
        }
    }
    assert ios["message"]["token"] == "tok2"
    # FCM requires every data value to be a string.
    assert all(isinstance(v, str) for v in android["message"]["data"].values())


def test_a_burst_and_a_group():
    second = {"id": "01a3", "from": "carol", "group": "team", "ts": 18, "preview": None}
    [message] = fcm.to_fcm(notification(ITEM, second), ["tok"])
    body = message["message"]
    assert body["notification"] == {"title": "carol in team", "body": "2 new messages"}
    assert body["data"]["ids"] == "01a2,01a3"
    assert body["data"]["group"] == "team"
    assert body["apns"]["payload"]["aps"]["thread-id"] == "team"
    [no_preview] = fcm.to_fcm(notification(second), ["tok"])
    assert no_preview["message"]["notification"]["body"] == "New message"
    assert fcm.to_fcm(notification(ITEM), []) == []
    assert fcm.to_fcm(notification(), ["tok"]) == []


def test_handle():
    body = json.dumps(notification(ITEM)).encode()
    status, requests = fcm.handle(SECRET, lambda user: [f"{user}-phone"], body, signed(body))
    assert status == 200 and requests[0]["message"]["token"] == "bob-phone"
    assert fcm.handle(SECRET, lambda user: [], body, signed(body, b"x")) == (401, [])
    assert fcm.handle(SECRET, lambda user: [], b"[]", signed(b"[]")) == (400, [])
    assert fcm.handle(SECRET, lambda user: [], b"{", signed(b"{")) == (400, [])


async def test_behind_a_real_server(make_server, tmp_path):  # type: ignore[no-untyped-def]
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}/push"
    server = make_server("--workers", "2", "--push-webhook", gateway_url, "--push-window", "0.1")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"bob": ["bobs-phone"]}))
    secret = str(server.data_dir / "push-secret")
    args = ["--secret-file", secret, "--tokens", str(tokens), "--project", "demo"]
    gateway = subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert gateway.stdout is not None
        assert gateway.stdout.readline().startswith("fcm gateway on")
        async with connect(server.ws_url("alice"), open_timeout=10) as alice:
            await alice.send(
                json.dumps({"op": "send", "to": "bob", "cid": "1", "body": {"text": "dinner?"}})
            )
            ack = json.loads(await asyncio.wait_for(alice.recv(), 10))
        line = await asyncio.wait_for(asyncio.to_thread(gateway.stdout.readline), 10)
        sent = json.loads(line)
        assert sent["url"] == "https://fcm.googleapis.com/v1/projects/demo/messages:send"
        message = sent["body"]["message"]
        assert message["token"] == "bobs-phone"
        assert message["notification"] == {"title": "alice", "body": "dinner?"}
        assert message["data"]["ids"] == ack["id"]
        # The gateway answered 200: roost counts it as sent.
        deadline = time.monotonic() + 10
        while "roost_push_sent_total 1" not in httpx.get(f"{server.http}/metrics").text:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        gateway.terminate()
        gateway.wait(10)
