"""Every row of docs/protocol.md's error tables, against a running server."""

from __future__ import annotations

import json

import pytest

from rawws import RawWS
from roost.proto.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT


@pytest.fixture
def ws(server):  # type: ignore[no-untyped-def]
    client = RawWS(server.port, server.token("alice"))
    yield client
    client.close()


def expect_close(ws: RawWS, code: int) -> str:
    got, reason = ws.recv_close()
    assert got == code, reason
    # We answer the close; the server then ends TCP.
    ws.send_frame(OP_CLOSE, code.to_bytes(2, "big"))
    assert ws.at_eof()
    return reason


@pytest.mark.parametrize(
    ("payload", "cid", "reason_part"),
    [
        (b"not json", None, "not valid JSON"),
        (b"[1, 2]", None, "Expected `object`"),
        (b'{"op": "dance", "cid": "c9"}', "c9", "Invalid value 'dance'"),
        (b'{"cid": "c8"}', "c8", "missing required field `op`"),
        (b'{"op": "send", "cid": "c7", "body": 1}', "c7", 'exactly one of "to" and "group"'),
        (b'{"op": "send", "to": "bob", "body": 1}', None, "missing required field `cid`"),
        (b'{"op": "send", "to": "b b", "cid": "c6", "body": 1}', "c6", "$.to"),
        (b'{"op": "send", "to": "bob", "cid": 5, "body": 1}', None, "$.cid"),
        (b'{"op": "recv", "ids": "x"}', None, "$.ids"),
    ],
)
def test_bad_request_keeps_the_connection_open(ws, payload, cid, reason_part):  # type: ignore[no-untyped-def]
    ws.send_frame(OP_TEXT, payload)
    error = ws.recv_json()
    assert error["op"] == "error"
    assert error["code"] == "bad_request"
    assert error["cid"] == cid
    assert reason_part in error["reason"]
    # Still open: a valid op works afterwards.
    ws.send_json({"op": "send", "to": "bob", "cid": "after", "body": {"n": 1}})
    ack = ws.recv_json()
    assert ack["op"] == "ack"
    assert ack["cid"] == "after"


def test_binary_frame_closes_1003(ws):  # type: ignore[no-untyped-def]
    ws.send_frame(OP_BINARY, b"\x00\x01")
    expect_close(ws, 1003)


def test_invalid_utf8_closes_1007(ws):  # type: ignore[no-untyped-def]
    ws.send_frame(OP_TEXT, b'{"op":"send","to":"bob","cid":"c","body":"\xff\xfe"}')
    expect_close(ws, 1007)


def test_invalid_utf8_across_fragments_closes_1007(ws):  # type: ignore[no-untyped-def]
    ws.send_frame(OP_TEXT, b'"\xe2\x82', fin=False)
    ws.send_frame(OP_CONT, b'\x28"', fin=True)
    expect_close(ws, 1007)


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(lambda ws: ws.send_frame(OP_TEXT, b"{}", mask=False), id="unmasked"),
        pytest.param(lambda ws: ws.send_frame(OP_TEXT, b"{}", rsv=4), id="rsv1"),
        pytest.param(lambda ws: ws.send_frame(OP_TEXT, b"{}", rsv=1), id="rsv3"),
        pytest.param(lambda ws: ws.send_frame(0x3, b"{}"), id="opcode-3"),
        pytest.param(lambda ws: ws.send_frame(0xB, b""), id="opcode-11"),
        pytest.param(lambda ws: ws.send_frame(OP_PING, b"x", fin=False), id="fragmented-ping"),
        pytest.param(lambda ws: ws.send_frame(OP_PING, b"x" * 126), id="ping-126-bytes"),
        pytest.param(lambda ws: ws.send_frame(OP_CONT, b"x"), id="lone-continuation"),
        pytest.param(
            lambda ws: (ws.send_frame(OP_TEXT, b"a", fin=False), ws.send_frame(OP_TEXT, b"b")),
            id="text-inside-fragments",
        ),
        pytest.param(lambda ws: ws.send_frame(OP_CLOSE, b"\x03"), id="close-1-byte"),
        pytest.param(
            lambda ws: ws.send_frame(OP_CLOSE, (1006).to_bytes(2, "big")), id="close-code-1006"
        ),
    ],
)
def test_protocol_violations_close_1002(ws, send):  # type: ignore[no-untyped-def]
    send(ws)
    expect_close(ws, 1002)


def test_oversized_frame_closes_1009_before_the_payload_arrives(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--max-frame", "100000", "--max-body", "1000")
    ws = RawWS(server.port, server.token("alice"))
    # Only the header of a 200,000-byte frame: the server must not wait for the rest.
    ws.send_raw(bytes((0x81, 0x80 | 127)) + (200_000).to_bytes(8, "big") + b"\0\0\0\0")
    expect_close(ws, 1009)


def test_oversized_fragmented_message_closes_1009(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--max-frame", "1000", "--max-body", "1000")
    ws = RawWS(server.port, server.token("alice"))
    ws.send_frame(OP_TEXT, b"x" * 600, fin=False)
    ws.send_frame(OP_CONT, b"x" * 600, fin=True)
    expect_close(ws, 1009)


def test_oversized_body_is_too_large_and_stays_open(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--max-body", "1000")
    ws = RawWS(server.port, server.token("alice"))
    body = "x" * 1000  # 1002 bytes with its quotes
    ws.send_json({"op": "send", "to": "bob", "cid": "big", "body": body})
    error = ws.recv_json()
    assert error == {
        "op": "error",
        "cid": "big",
        "code": "too_large",
        "reason": "body is 1002 bytes, the limit is 1000",
    }
    ws.send_json({"op": "send", "to": "bob", "cid": "ok", "body": "x" * 998})
    assert ws.recv_json()["cid"] == "ok"


def test_ping_is_answered_with_pong_of_the_same_payload(ws):  # type: ignore[no-untyped-def]
    ws.send_frame(OP_PING, b"are you there")
    assert ws.recv_frame() == (OP_PONG, b"are you there")


def test_fragments_with_a_ping_between_them(ws):  # type: ignore[no-untyped-def]
    message = json.dumps({"op": "send", "to": "bob", "cid": "frag", "body": "é" * 50}).encode()
    ws.send_frame(OP_TEXT, message[:7], fin=False)
    ws.send_frame(OP_PING, b"mid")
    ws.send_frame(OP_CONT, message[7:40], fin=False)
    ws.send_frame(OP_CONT, message[40:], fin=True)
    assert ws.recv_frame() == (OP_PONG, b"mid")
    ack = ws.recv_json()
    assert ack["op"] == "ack"
    assert ack["cid"] == "frag"


def test_client_close_is_echoed_and_tcp_closed(ws):  # type: ignore[no-untyped-def]
    ws.send_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye")
    opcode, payload = ws.recv_frame()
    assert opcode == OP_CLOSE
    assert int.from_bytes(payload[:2], "big") == 1000
    assert ws.at_eof()


def test_empty_close_is_answered_with_1000(ws):  # type: ignore[no-untyped-def]
    ws.send_frame(OP_CLOSE, b"")
    opcode, payload = ws.recv_frame()
    assert (opcode, payload[:2]) == (OP_CLOSE, (1000).to_bytes(2, "big"))


def test_frames_sent_along_with_the_handshake_are_served(server):  # type: ignore[no-untyped-def]
    """A client may pipeline its first frame right behind the upgrade request."""
    import socket

    from rawws import upgrade_request
    from roost.proto.frames import encode_frame

    frame = encode_frame(
        OP_TEXT,
        json.dumps({"op": "send", "to": "bob", "cid": "early", "body": 1}).encode(),
        mask_key=b"abcd",
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(upgrade_request(f"/ws?token={server.token('alice')}") + frame)
        data = b""
        while b'"cid":"early"' not in data:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 ")
    assert b'"op":"ack"' in data
