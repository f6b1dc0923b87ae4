"""The connection engine: a compact epoll table inside the asyncio loop.

Rules:
- One ``select.epoll`` holds the listening socket and every connection; its
  own fd is registered with ``loop.add_reader``. When it is readable, one
  ``poll(0, n)`` returns every ready socket, and each is served in turn: read
  up to 256 KiB, parse every complete frame in it, hand each message to the
  handler.
- Output is appended to the connection's ``wbuf`` and written once per loop
  turn (``_flush``), so a reader gets one ``write`` for everything the turn
  produced for it. Only when the socket will not take it all does the rest
  stay in ``wbuf``, with EPOLLOUT armed; past ``max_outbuf`` the reader is a
  slow consumer and is closed with 4008 (its items stay in its inbox).
- Sockets are bare fds (``socket.detach``) driven with ``os.read`` and
  ``os.write``: no socket object, transport or protocol per connection.
- The engine knows HTTP and RFC 6455 only through ``roost.proto``; what a
  request or a message *means* is the handler's business (``roost.hub``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import select
import socket
import time
from typing import Protocol

from roost.config import Settings
from roost.engine.sweep import Deadlines
from roost.engine.table import CLOSING, FLUSH_CLOSE, HANDSHAKE, LINGER, LOADING, OPEN, Conn
from roost.errors import HandshakeError, ProtocolError
from roost.proto.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    CloseCode,
    assemble,
    encode_close,
    encode_frame,
    parse_close,
    parse_frames,
)
from roost.proto.handshake import (
    Request,
    check_upgrade,
    json_error,
    parse_request,
    switching_protocols,
)

log = logging.getLogger("roost.engine")

READ_SIZE = 262_144  # bytes per read: large reads are where batching starts
MAX_EVENTS = 4_096  # sockets served per poll; the rest wait for the next turn
ACCEPTS_PER_TURN = 512  # so a connect storm cannot starve open connections
SWEEP_INTERVAL = 0.5  # seconds between deadline sweeps
HANDSHAKE_OUTCOMES = (
    "upgraded",  # became a WebSocket connection on this worker
    "handed_off",  # authenticated here, passed to the user's owner
    "adopted",  # handed to this worker by another
    "http",  # a plain HTTP request answered
    "rejected",  # answered with an HTTP error (401, 400, 431, ...)
    "timeout",  # request head not complete in time (408)
    "overloaded",  # too many handshakes in progress (503)
    "fd_limit",  # accept failed: out of file descriptors
)

_EPOLLIN = select.EPOLLIN
_EPOLLOUT = select.EPOLLOUT
_EPOLL_ERR = select.EPOLLERR | select.EPOLLHUP
_RETRY = (BlockingIOError, InterruptedError)


class Handler(Protocol):
    """What the engine asks of the messaging layer."""

    def authenticate(self, request: Request) -> str:
        """The user id for an upgrade request; raises AuthError (401)."""
        ...

    def on_http(self, conn: Conn, request: Request) -> bytes | None:
        """The answer to a plain HTTP request, or None to answer later with
        ``Engine.send_http``."""
        ...

    def owns(self, user: str) -> bool:
        """Whether this worker owns ``user`` (workers.routing)."""
        ...

    def hand_off(self, fd: int, user: str, key: str, leftover: bytes) -> None:
        """Pass an authenticated socket to the owner of ``user``; the handler
        now owns ``fd``."""
        ...

    def on_open(self, conn: Conn) -> None: ...

    def on_text(self, conn: Conn, payload: bytes) -> None: ...

    def on_closed(self, conn: Conn) -> None: ...


def listen_socket(settings: Settings) -> socket.socket:
    """A non-blocking listening socket whose options every accepted socket
    inherits on Linux: TCP_NODELAY and kernel keepalive (our idle-peer timer)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, settings.keepalive_idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, settings.keepalive_interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, settings.keepalive_count)
    sock.bind((settings.host, settings.port))
    sock.listen(settings.backlog)
    sock.setblocking(False)
    return sock


class Engine:
    def __init__(self, settings: Settings, handler: Handler) -> None:
        self.settings = settings
        self.handler = handler
        self.table: dict[int, Conn] = {}  # fd -> Conn, every socket we hold
        self._loop = asyncio.get_running_loop()
        self._ep = select.epoll()
        self._listener: socket.socket | None = None
        self._dirty: list[Conn] = []  # connections with output for this turn's flush
        # fd -> bytes queued, for sockets that would not take all their output
        self._waiting: dict[int, int] = {}
        self._flush_scheduled = False
        self._handshakes = Deadlines(settings.handshake_timeout)
        self._closings = Deadlines(settings.close_timeout)
        self._sweeper: asyncio.TimerHandle | None = None
        self.stats_bytes_in = 0
        self.stats_bytes_out = 0
        self.stats_slow_consumers = 0
        self.stats_handshakes = dict.fromkeys(HANDSHAKE_OUTCOMES, 0)
        # Accept-rate limit: tokens refilled by the sweep; at zero the listener
        # leaves the epoll set until the next refill, so a reconnect storm
        # waits in the kernel's backlog instead of starving open connections.
        self._accept_tokens = float(settings.accept_rate)
        self._accept_paused = False

    # ---- lifecycle -------------------------------------------------------

    def start(self, listener: socket.socket) -> None:
        self._listener = listener
        self._ep.register(listener.fileno(), _EPOLLIN)
        self._loop.add_reader(self._ep.fileno(), self._on_ready)
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)

    def stop_accepting(self) -> None:
        if self._listener is not None:
            if not self._accept_paused:
                self._ep.unregister(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection: open ones with a close frame, others at once."""
        for conn in list(self.table.values()):
            if conn.state in (LOADING, OPEN):
                self.close(conn, code, reason)
            elif conn.state == HANDSHAKE:
                self._drop(conn)
        self._flush()

    async def wait_closed(self, timeout: float) -> None:
        """Wait up to ``timeout`` for peers to finish their close handshakes."""
        deadline = time.monotonic() + timeout
        while self.table and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.table.values()):
            self._drop(conn)

    def shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._loop.remove_reader(self._ep.fileno())
        self.stop_accepting()
        for conn in list(self.table.values()):
            self._drop(conn)
        self._ep.close()

    # ---- output, for the handler -----------------------------------------

    def send_text(self, conn: Conn, payload: bytes) -> None:
        """Queue one text message for this turn's flush. Once a connection is
        closing nothing more is queued for it: its close frame is last."""
        if conn.state < CLOSING:
            self._queue(conn, encode_frame(OP_TEXT, payload))

    def send_http(self, conn: Conn, response: bytes) -> None:
        """Answer a plain HTTP request, then close the connection."""
        if conn.fd < 0:
            return
        self._handshakes.discard(conn)
        conn.state = LINGER
        self._queue(conn, response)

    def close(self, conn: Conn, code: int, reason: str = "") -> None:
        """Start the closing handshake (RFC 6455 §7.1.2): send our close frame,
        then wait for the peer's, at most ``close_timeout``."""
        if conn.fd < 0 or conn.state >= CLOSING:
            return
        self.handler.on_closed(conn)
        conn.state = CLOSING
        conn.partial = None
        self._queue(conn, encode_frame(OP_CLOSE, encode_close(code, reason)))
        self._closings.add(conn, self._loop.time())

    def _queue(self, conn: Conn, data: bytes) -> None:
        if conn.fd < 0:
            return
        if conn.wbuf is None:
            conn.wbuf = [data]
            self._dirty.append(conn)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush)
        else:
            conn.wbuf.append(data)
            pending = self._waiting.get(conn.fd)
            if pending is not None:
                # Backpressured: count what piles up, since no write will.
                pending += len(data)
                self._waiting[conn.fd] = pending
                if pending > self.settings.max_outbuf and conn.state < CLOSING:
                    self._slow_consumer(conn)

    # ---- the loop turn ---------------------------------------------------

    def _on_ready(self) -> None:
        table = self.table
        listener = self._listener
        listen_fd = listener.fileno() if listener is not None else -1
        for fd, events in self._ep.poll(0, MAX_EVENTS):
            if fd == listen_fd:
                self._accept()
                continue
            conn = table.get(fd)
            if conn is None:
                continue
            try:
                if events & _EPOLLOUT:
                    self._write(conn)
                if events & (_EPOLLIN | _EPOLL_ERR) and conn.fd >= 0:
                    self._read(conn)
            except Exception:
                # A bug must cost one connection, not the worker.
                log.exception("internal error on %r", conn)
                self._fail(conn)
        self._flush()

    def _accept(self) -> None:
        assert self._listener is not None
        now = self._loop.time()
        budget = min(ACCEPTS_PER_TURN, int(self._accept_tokens))
        if budget <= 0:
            self._pause_accepting()
            return
        for _ in range(budget):
            try:
                sock, _addr = self._listener.accept()
            except _RETRY:
                return
            except OSError as exc:
                # EMFILE/ENFILE: out of descriptors. Leave the rest in the
                # backlog until the next sweep (a level-triggered listener
                # would otherwise spin); roost doctor explains the limit.
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._count_handshake("fd_limit")
                    self._pause_accepting()
                    return
                continue
            self._accept_tokens -= 1
            fd = sock.detach()
            os.set_blocking(fd, False)
            conn = Conn(fd)
            self.table[fd] = conn
            self._ep.register(fd, _EPOLLIN)
            if len(self._handshakes) >= self.settings.max_pending_handshakes:
                self._count_handshake("overloaded")
                self.send_http(conn, json_error(503, "too many pending handshakes"))
                continue
            self._handshakes.add(conn, now)

    def _pause_accepting(self) -> None:
        if self._listener is not None and not self._accept_paused:
            self._accept_paused = True
            self._ep.unregister(self._listener.fileno())

    def _refill_accept_tokens(self) -> None:
        rate = self.settings.accept_rate
        self._accept_tokens = min(float(rate), self._accept_tokens + rate * SWEEP_INTERVAL)
        if self._accept_paused and self._listener is not None:
            self._accept_paused = False
            self._ep.register(self._listener.fileno(), _EPOLLIN)

    def _read(self, conn: Conn) -> None:
        try:
            data = os.read(conn.fd, READ_SIZE)
        except _RETRY:
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        self.stats_bytes_in += len(data)
        if conn.rbuf is not None:
            data = conn.rbuf + data
            conn.rbuf = None
        state = conn.state
        if state in (OPEN, LOADING):
            self._read_frames(conn, data)
        elif state == HANDSHAKE:
            self._read_request(conn, data)
        elif state == CLOSING:
            self._read_closing(conn, data)
        # LINGER and FLUSH_CLOSE: the peer's bytes are of no interest any more.

    def _read_frames(self, conn: Conn, data: bytes) -> None:
        max_frame = self.settings.max_frame
        try:
            frames, used = parse_frames(data, max_frame)
            messages, conn.partial = assemble(frames, conn.partial, max_frame)
        except ProtocolError as exc:
            self.close(conn, exc.code, exc.reason)
            return
        if used < len(data):
            conn.rbuf = data[used:]
        handler = self.handler
        for opcode, payload in messages:
            if opcode == OP_TEXT:
                handler.on_text(conn, payload)
            elif opcode == OP_PING:
                self._queue(conn, encode_frame(0xA, payload))
            elif opcode == OP_CLOSE:
                self._on_close_frame(conn, payload)
                return
            elif opcode == OP_BINARY:
                self.close(conn, CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
                return
            # A pong needs nothing: kernel keepalive already proves liveness.
            if conn.state >= CLOSING:
                return

    def _on_close_frame(self, conn: Conn, payload: bytes) -> None:
        """The peer started the close: echo its code, then close (§5.5.1)."""
        try:
            code, _reason = parse_close(payload)
        except ProtocolError as exc:
            self.close(conn, exc.code, exc.reason)
            return
        if code == CloseCode.NO_STATUS:
            code = CloseCode.NORMAL
        self.handler.on_closed(conn)
        conn.state = FLUSH_CLOSE
        conn.rbuf = conn.partial = None
        self._queue(conn, encode_frame(OP_CLOSE, encode_close(code)))

    def _read_closing(self, conn: Conn, data: bytes) -> None:
        """After our close frame, only the peer's close frame matters."""
        try:
            frames, used = parse_frames(data, self.settings.max_frame)
        except ProtocolError:
            self._drop(conn)
            return
        if any(opcode == OP_CLOSE for opcode, _fin, _payload in frames):
            self._drop(conn)
        elif used < len(data):
            conn.rbuf = data[used:]

    def _read_request(self, conn: Conn, data: bytes) -> None:
        settings = self.settings
        try:
            parsed = parse_request(data, settings.max_header_bytes, settings.max_body)
            if parsed is None:
                conn.rbuf = data
                return
            request, used = parsed
            if request.path != "/ws":
                response = self.handler.on_http(conn, request)
                self._count_handshake("http")
                if response is not None:
                    self.send_http(conn, response)
                else:
                    self._handshakes.discard(conn)
                    conn.state = LINGER
                return
            key = check_upgrade(request)
            user = self.handler.authenticate(request)
        except HandshakeError as exc:
            self._count_handshake("rejected")
            self.send_http(conn, json_error(exc.status, exc.reason, exc.headers))
            return
        self._handshakes.discard(conn)
        if not self.handler.owns(user):
            self._count_handshake("handed_off")
            self._hand_off(conn, user, key, data[used:])
            return
        self._count_handshake("upgraded")
        self._upgrade(conn, user, key, data[used:])

    def _upgrade(self, conn: Conn, user: str, key: str, leftover: bytes) -> None:
        conn.user = user
        conn.state = LOADING
        self._queue(conn, switching_protocols(key))
        self.handler.on_open(conn)
        if leftover:
            # The client did not wait for our 101: its first frames came along.
            self._read_frames(conn, leftover)

    def _hand_off(self, conn: Conn, user: str, key: str, leftover: bytes) -> None:
        """Give the socket to the user's owner, with the bytes read after the
        request head; nothing has been written to it yet (the owner sends 101)."""
        fd = conn.fd
        del self.table[fd]
        self._ep.unregister(fd)
        conn.fd = -1
        self.handler.hand_off(fd, user, key, leftover)

    def adopt(self, fd: int, user: str, key: str, leftover: bytes) -> None:
        """Take over a socket another worker authenticated for ``user``."""
        self._count_handshake("adopted")
        conn = Conn(fd)
        self.table[fd] = conn
        self._ep.register(fd, _EPOLLIN)
        self._upgrade(conn, user, key, leftover)

    def _count_handshake(self, outcome: str) -> None:
        self.stats_handshakes[outcome] = self.stats_handshakes.get(outcome, 0) + 1

    # ---- output to sockets -----------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            if conn.fd >= 0 and conn.wbuf is not None:
                self._write(conn)

    def _write(self, conn: Conn) -> None:
        wbuf = conn.wbuf
        fd = conn.fd
        if wbuf is None:
            return
        data = wbuf[0] if len(wbuf) == 1 else b"".join(wbuf)
        try:
            sent = os.write(fd, data)
        except _RETRY:
            sent = 0
        except OSError:
            self._drop(conn)
            return
        self.stats_bytes_out += sent
        if sent == len(data):
            conn.wbuf = None
            if fd in self._waiting:
                del self._waiting[fd]
                self._ep.modify(fd, _EPOLLIN)
            if conn.state == FLUSH_CLOSE:
                self._drop(conn)
            elif conn.state == LINGER:
                self._linger(conn)
            return
        rest = data[sent:]
        conn.wbuf = [rest]
        if fd not in self._waiting:
            self._ep.modify(fd, _EPOLLIN | _EPOLLOUT)
        self._waiting[fd] = len(rest)
        if len(rest) > self.settings.max_outbuf and conn.state < CLOSING:
            self._slow_consumer(conn)

    def _slow_consumer(self, conn: Conn) -> None:
        """The reader fell more than ``max_outbuf`` behind: queue nothing more
        for it, and close with 4008 after what is queued (which may start
        with half a frame, so it cannot be cut). It has ``close_timeout`` to
        read it; what it never gets stays in its inbox until confirmed."""
        self.stats_slow_consumers += 1
        self.close(conn, CloseCode.SLOW_CONSUMER, "slow consumer")

    def _linger(self, conn: Conn) -> None:
        """After an HTTP answer: half-close, and read until the peer's EOF so
        that unread input cannot turn our close into a reset that destroys the
        answer in flight."""
        try:
            _shutdown_write(conn.fd)
        except OSError:
            self._drop(conn)
            return
        self._closings.add(conn, self._loop.time())

    def _fail(self, conn: Conn) -> None:
        """Close a connection after an internal error, telling the peer no
        details (RFC 6455 §7.4.1: 1011; HTTP: 500)."""
        if conn.state == HANDSHAKE:
            self.send_http(conn, json_error(500, "internal error"))
        elif conn.state in (LOADING, OPEN):
            self.close(conn, CloseCode.INTERNAL_ERROR, "internal error")
        else:
            self._drop(conn)

    def _drop(self, conn: Conn) -> None:
        """Forget the connection and close its socket, now."""
        fd = conn.fd
        if fd < 0:
            return
        if conn.state in (LOADING, OPEN):
            self.handler.on_closed(conn)
        self._handshakes.discard(conn)
        self._closings.discard(conn)
        self._waiting.pop(fd, None)
        del self.table[fd]
        with contextlib.suppress(OSError):
            self._ep.unregister(fd)
        os.close(fd)
        conn.fd = -1
        conn.rbuf = conn.wbuf = conn.partial = None

    def _sweep(self) -> None:
        now = self._loop.time()
        self._refill_accept_tokens()
        for conn in self._handshakes.expired(now):
            self._count_handshake("timeout")
            self.send_http(conn, json_error(408, "handshake timeout"))
        for conn in self._closings.expired(now):
            self._drop(conn)
        self._flush()
        self._sweeper = self._loop.call_later(SWEEP_INTERVAL, self._sweep)


def _shutdown_write(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()
