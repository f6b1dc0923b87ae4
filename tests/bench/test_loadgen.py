"""The client engine against real servers: handshakes, failures by reason, frames."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest

from roost.auth import issue_token
from roost.bench.loadgen import (
    _WS_ACCEPT,
    OPEN,
    Conn,
    Engine,
    Target,
    default_source_ips,
    parse_source_ips,
)
from roost.bench.spawn import Server, free_port
from roost.errors import ConfigError


class Recorder:
    """A handler that remembers what the engine told it."""

    def __init__(self) -> None:
        self.opened: list[Conn] = []
        self.failed: list[tuple[Conn, str]] = []
        self.closed: list[tuple[Conn, str]] = []
        self.texts: list[tuple[Conn, bytes]] = []

    def on_open(self, conn: Conn, now: float) -> None:
        self.opened.append(conn)

    def on_fail(self, conn: Conn, reason: str, now: float) -> None:
        self.failed.append((conn, reason))

    def on_text(self, conn: Conn, payload: bytes, now: float) -> None:
        self.texts.append((conn, payload))

    def on_close(self, conn: Conn, reason: str, now: float) -> None:
        self.closed.append((conn, reason))

    def on_turn(self, now: float) -> None:
        pass


def _run(engine: Engine, until: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:  # type: ignore[operator]
        engine.poll(0.05)


def test_target_from_url() -> None:
    t = Target.from_url("ws://localhost:8080/ws")
    assert (t.host, t.port, t.path, t.is_loopback) == ("127.0.0.1", 8080, "/ws", True)
    assert b"GET /ws?token=abc HTTP/1.1\r\n" in t.request("abc")
    with pytest.raises(ConfigError):
        Target.from_url("http://127.0.0.1:8080/ws")


def test_source_ips() -> None:
    assert parse_source_ips("127.0.0.2-127.0.0.4, 127.0.1.9") == [
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.1.9",
    ]
    assert parse_source_ips("127.2.0.0/30") == ["127.2.0.1", "127.2.0.2"]
    for bad in ("127.0.0.9-127.0.0.1", "nope", ""):
        with pytest.raises(ConfigError):
            parse_source_ips(bad)
    ips = default_source_ips(600_000, per_ip=2000)
    assert len(ips) == 300 and len(set(ips)) == 300
    assert all(ip.startswith("127.1.") and not ip.endswith((".0", ".255")) for ip in ips)


def test_open_many_from_many_sources_and_exchange_frames(peer: Server) -> None:
    rec = Recorder()
    engine = Engine(Target.from_url(peer.url), lambda u: issue_token(peer.secret, u), rec)
    ips = parse_source_ips("127.3.0.1-127.3.0.4")
    conns = [Conn(i, f"lg.{i}", ips[i % 4]) for i in range(40)]
    engine.ramp(conns, 0, time.monotonic())
    _run(engine, lambda: len(rec.opened) + len(rec.failed) == 40)
    assert len(rec.opened) == 40 and not rec.failed
    assert {c.sock.getsockname()[0] for c in conns if c.sock} == set(ips)
    # A message large enough to need several writes and reads.
    body = b'"' + b"y" * 60000 + b'"'
    for c in conns:
        engine.send(c, b'{"op":"send","to":"lg.0","cid":"%d","body":%b}' % (c.index, body))
    _run(engine, lambda: len(rec.texts) >= 80)
    ops = sorted(p[:12] for _, p in rec.texts)
    assert ops.count(b'{"op":"ack",') == 40 and ops.count(b'{"op":"msg",') == 40
    for c in conns:
        engine.close(c, abort=True)


def test_failures_are_counted_by_reason(peer: Server) -> None:
    rec = Recorder()
    wrong = Engine(
        Target.from_url(peer.url),
        lambda u: issue_token(b"a wrong secret, long enough for HS256", u),
        rec,
    )
    conns = [Conn(i, f"bad.{i}", "") for i in range(5)]
    wrong.ramp(conns, 0, time.monotonic())
    _run(wrong, lambda: len(rec.failed) == 5)
    assert [r for _, r in rec.failed] == ["http 401"] * 5
    assert all(c.sock is None for c in conns)

    rec = Recorder()
    closed_port = Target("127.0.0.1", free_port())
    refused = Engine(closed_port, lambda u: "t", rec)
    refused.ramp([Conn(0, "x", "")], 0, time.monotonic())
    _run(refused, lambda: rec.failed)
    assert rec.failed[0][1] == "ECONNREFUSED"


def test_handshake_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts at the TCP level, never answers the upgrade
        rec = Recorder()
        target = Target("127.0.0.1", listener.getsockname()[1])
        engine = Engine(target, lambda u: "t", rec, handshake_timeout=0.3)
        engine.ramp([Conn(0, "x", "")], 0, time.monotonic())
        _run(engine, lambda: rec.failed)
        assert rec.failed[0][1] == "timeout"
        assert engine.pending == 0


def test_frames_after_the_handshake_and_a_server_close() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        rec = Recorder()
        engine = Engine(Target("127.0.0.1", listener.getsockname()[1]), lambda u: "t", rec)
        conn = Conn(1, "y", "")
        engine.ramp([conn], 0, time.monotonic())
        engine.poll(0.05)
        server_side, _ = listener.accept()
        with server_side:
            server_side.setblocking(False)
            request = b""
            deadline = time.monotonic() + 5
            while not request.endswith(b"\r\n\r\n") and time.monotonic() < deadline:
                engine.poll(0.05)
                with contextlib.suppress(BlockingIOError):
                    request += server_side.recv(4096)
            assert request.startswith(b"GET /ws?token=t HTTP/1.1\r\n")
            # The 101, a text frame and a close 4001 in one segment (RFC 6455 §5.5.1).
            server_side.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + _WS_ACCEPT + b"\r\n\r\n"
                b"\x81\x05hello\x88\x02\x0f\xa1"
            )
            _run(engine, lambda: rec.closed)
            assert rec.opened == [conn]
            assert rec.texts == [(conn, b"hello")]
            assert rec.closed == [(conn, "close 4001")]
            server_side.setblocking(True)
            echo = server_side.recv(64)
            assert echo == b"\x88\x82\x00\x00\x00\x00\x0f\xa1"  # masked with the zero key
        assert conn.state != OPEN and conn.sock is None
