"""The opening handshake against a running server: tokens, HTTP errors,
header limits, slowloris, pending-handshake cap."""

from __future__ import annotations

import json
import socket
import time

import jwt
import pytest
from websockets.asyncio.client import connect

from rawws import RawWS, http_exchange, upgrade_request
from roost.auth import load_secret


def upgrade(server, path: str, extra: str = "") -> tuple[int, dict, dict]:  # type: ignore[no-untyped-def]
    status, headers, body = http_exchange(server.port, upgrade_request(path, extra))
    return status, headers, json.loads(body) if body else {}


def forged(server, claims: dict, key: bytes | None = None, alg: str = "HS256") -> str:  # type: ignore[no-untyped-def]
    return jwt.encode(claims, key or load_secret(server.data_dir), algorithm=alg)


def test_missing_token_is_401(server):  # type: ignore[no-untyped-def]
    status, headers, body = upgrade(server, "/ws")
    assert (status, body) == (401, {"error": "missing token"})
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("make_token", "error"),
    [
        (lambda s: "not-a-jwt", "invalid token: "),
        (
            lambda s: forged(s, {"sub": "alice"}, key=b"another secret, 32 bytes long....."),
            "invalid token: Signature verification failed",
        ),
        (lambda s: forged(s, {"sub": "alice", "exp": int(time.time()) - 10}), "token expired"),
        (lambda s: forged(s, {"user": "alice"}), "invalid token: bad sub"),
        (lambda s: forged(s, {"sub": "bad user!"}), "invalid token: bad sub"),
        (lambda s: forged(s, {"sub": "x" * 65}), "invalid token: bad sub"),
        (lambda s: forged(s, {"sub": 42}), "invalid token: "),
        (lambda s: jwt.encode({"sub": "alice"}, None, algorithm="none"), "invalid token: "),
        (lambda s: forged(s, {"sub": "alice"}, alg="HS512"), "invalid token: "),
    ],
    ids=[
        "garbage",
        "forged",
        "expired",
        "no-sub",
        "bad-sub",
        "long-sub",
        "int-sub",
        "alg-none",
        "alg-hs512",
    ],
)
def test_bad_tokens_are_401_and_not_upgraded(server, make_token, error):  # type: ignore[no-untyped-def]
    status, headers, body = upgrade(server, f"/ws?token={make_token(server)}")
    assert status == 401
    assert body["error"].startswith(error)
    assert "upgrade" not in headers


def test_token_in_authorization_header(server):  # type: ignore[no-untyped-def]
    ws = RawWS(server.port, None, f"Authorization: Bearer {server.token('bob')}\r\n")
    assert ws.status == 101
    ws.send_json({"op": "send", "to": "carol", "cid": "h", "body": 1})
    assert ws.recv_json()["op"] == "ack"
    ws.close()


async def test_websockets_library_connects_with_bearer(server):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {server.token('bob')}"}
    async with connect(server.url, additional_headers=headers, compression=None) as ws:
        await ws.send(json.dumps({"op": "send", "to": "bob", "cid": "self", "body": 1}))
        ack = json.loads(await ws.recv())
        assert ack["op"] == "ack"
        # Sent to ourselves: the message comes back too.
        msg = json.loads(await ws.recv())
        assert (msg["op"], msg["from"], msg["to"]) == ("msg", "bob", "bob")


async def test_no_extension_is_negotiated(server):  # type: ignore[no-untyped-def]
    # The library offers permessage-deflate by default; roost must decline it.
    async with connect(server.ws_url("carol")) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None


def test_expiring_token_is_accepted_before_exp(server):  # type: ignore[no-untyped-def]
    ws = RawWS(server.port, server.token("dave", ttl=60))
    assert ws.status == 101
    ws.close()


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not found"),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 400, "missing Upgrade: websocket"),
        (
            b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            400,
            "a WebSocket upgrade must be a GET",
        ),
        (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 400, "missing Connection: Upgrade"),
        (
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n",
            400,
            "missing Sec-WebSocket-Key",
        ),
        (
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
            400,
            "invalid Sec-WebSocket-Key",
        ),
        (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405, "method not allowed"),
    ],
    ids=["404", "no-upgrade", "post", "no-connection", "no-key", "bad-key", "garbage", "405"],
)
def test_bad_requests_get_json_errors(server, request_bytes, status, error):  # type: ignore[no-untyped-def]
    got, headers, body = http_exchange(server.port, request_bytes)
    assert (got, json.loads(body)) == (status, {"error": error})
    assert headers["connection"] == "close"


def test_wrong_websocket_version_is_426(server):  # type: ignore[no-untyped-def]
    request = upgrade_request(f"/ws?token={server.token('a')}").replace(
        b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"
    )
    status, headers, body = http_exchange(server.port, request)
    assert status == 426
    assert headers["sec-websocket-version"] == "13"
    assert json.loads(body) == {"error": "unsupported websocket version"}


def test_oversized_header_is_431(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--max-header-bytes", "1024")
    request = upgrade_request(f"/ws?token={server.token('a')}", "X-Padding: " + "p" * 2000 + "\r\n")
    status, _, body = http_exchange(server.port, request)
    assert (status, json.loads(body)) == (431, {"error": "request header too large"})


def test_slowloris_times_out_and_others_are_served(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--handshake-timeout", "1")
    request = upgrade_request(f"/ws?token={server.token('slow')}")
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    answer = b""
    started = time.monotonic()
    # One byte at a time, slower than the timeout allows in total.
    for i, byte in enumerate(request):
        try:
            slow.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        if i == 5:
            # Meanwhile a well-behaved client connects and is served.
            ws = RawWS(server.port, server.token("quick"))
            ws.send_json({"op": "send", "to": "quick", "cid": "q", "body": 1})
            assert ws.recv_json()["op"] == "ack"
            ws.close()
        time.sleep(0.05)
        if time.monotonic() - started > 3:
            break
    slow.settimeout(10)
    try:
        while chunk := slow.recv(4096):
            answer += chunk
    except ConnectionResetError:
        pass
    slow.close()
    status = int(answer.split(b" ")[1])
    assert status == 408
    assert answer.endswith(b'{"error":"handshake timeout"}')


def test_pending_handshake_cap_answers_503(make_server):  # type: ignore[no-untyped-def]
    # One worker: SO_REUSEPORT would spread the three connections over several.
    server = make_server("--max-pending-handshakes", "2", "--workers", "1")
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
    # The backlog is FIFO: both idle sockets are accepted before this one.
    status, _, body = http_exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert (status, json.loads(body)) == (503, {"error": "too many pending handshakes"})
    for sock in idle:
        sock.close()
