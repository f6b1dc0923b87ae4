"""The client engine: many WebSocket connections on raw non-blocking sockets and one epoll.

The load generator must cost less than the server it measures, so it uses the
same shape the server does: no asyncio, no task or timer per connection, a
small ``__slots__`` object per socket, reads parsed in batches by
``roost.proto.frames`` and writes flushed once per loop turn.

Rules:
- Connects start from a schedule (a heap of due times), never more than
  ``max_pending`` connects and handshakes in flight per process, so a ramp
  cannot overflow the server's accept queue by itself.
- A handshake that is not answered within ``handshake_timeout`` seconds fails
  with reason ``timeout``; every failure is counted by reason, never retried
  here (the caller decides, e.g. the storm's backoff).
- Client frames carry the mask bit with the all-zero key: RFC 6455 §5.3
  lets the client pick any key, and a zero key makes masking a no-op.
- Outgoing frames are appended to a per-connection list and written once per
  turn; EPOLLOUT is armed only while a write is left over.
- Many client sockets from one box: each binds to a 127.x.y.z source with
  IP_BIND_ADDRESS_NO_PORT, so the port is picked at connect time per
  (source, destination) pair and each source address gives another ~28k ports.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import heapq
import ipaddress
import math
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from roost.errors import ConfigError, ProtocolError
from roost.proto.frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    assemble,
    encode_frame,
    parse_close,
    parse_frames,
)

IP_BIND_ADDRESS_NO_PORT = 24
"""Linux socket option (SOL_IP): bind the address now, choose the port at connect."""

ZERO_KEY = b"\x00\x00\x00\x00"
MAX_MESSAGE = 1 << 20
"""Largest server frame or message accepted (protocol ``max_frame``)."""
READ_SIZE = 256 * 1024
"""Bytes per ``recv``: large reads are where batching starts."""
MAX_HEAD = 16 * 1024
"""Largest HTTP response head accepted during the handshake."""

_WS_KEY = base64.b64encode(b"roost-bench-key!")
# RFC 6455 §4.2.2: the accept value is base64(SHA-1(key + this GUID)). One key
# for every connection: the client never needs it to differ.
_WS_ACCEPT = base64.b64encode(
    hashlib.sha1(_WS_KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
)
_LINGER_ABORT = struct.pack("ii", 1, 0)

# Connection states.
WAITING, CONNECTING, HANDSHAKE, OPEN, CLOSED = range(5)


@dataclass(frozen=True)
class Target:
    """Where the connections go: ``ws://host:port/path``."""

    host: str
    port: int
    path: str = "/ws"

    @classmethod
    def from_url(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise ConfigError(f"--url must look like ws://127.0.0.1:8080/ws, not {url!r}")
        host = socket.gethostbyname(parts.hostname)
        return cls(host, parts.port or 80, parts.path or "/")

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    def request(self, token: str) -> bytes:
        """The upgrade request (RFC 6455 §4.1) carrying ``token`` in the query."""
        return (
            f"GET {self.path}?token={token} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {_WS_KEY.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()


def parse_source_ips(spec: str) -> list[str]:
    """``127.0.0.2-127.0.0.80``, ``127.1.0.0/24`` or single addresses, comma-separated."""
    ips: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            if "-" in part:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = ipaddress.IPv4Address(lo_s), ipaddress.IPv4Address(hi_s)
                if hi < lo:
                    raise ValueError("range ends before it starts")
                ips.extend(str(ipaddress.IPv4Address(n)) for n in range(int(lo), int(hi) + 1))
            elif "/" in part:
                ips.extend(str(a) for a in ipaddress.IPv4Network(part, strict=False).hosts())
            else:
                ips.append(str(ipaddress.IPv4Address(part)))
        except ValueError as exc:
            raise ConfigError(f"bad --source-ips {part!r}: {exc}") from None
    if not ips:
        raise ConfigError(f"--source-ips {spec!r} names no address")
    return ips


def default_source_ips(connections: int, per_ip: int = 2000) -> list[str]:
    """Loopback sources 127.1.0.1, 127.1.0.2, ... one per ``per_ip`` connections.

    Skips .0 and .255 so no address looks like a network or broadcast one.
    Far fewer connections per source than the ~28k ports keep the kernel's
    port search at connect time short.
    """
    count = max(1, math.ceil(connections / per_ip))
    base = int(ipaddress.IPv4Address("127.1.0.0"))
    ips: list[str] = []
    n = base
    while len(ips) < count:
        n += 1
        if n & 0xFF in (0, 255):
            continue
        ips.append(str(ipaddress.IPv4Address(n)))
    return ips


class Conn:
    """One client connection. The fields after ``out`` belong to the scenario."""

    __slots__ = (
        "epoch",  # how many times this connection has opened (reconnects add one)
        "expect",  # scenario: tokens this user still waits to see redelivered, or None
        "inbuf",  # bytes read but not yet a complete frame
        "index",  # global index of this user across every load-generator process
        "inflight",  # scenario: sends not yet acked
        "out",  # frames waiting for this turn's flush
        "partial",  # a fragmented server message in flight (roost.proto.frames.Partial)
        "seen",  # scenario: tokens delivered on this connection (duplicate detection)
        "sock",  # the socket, or None when not connected
        "source",  # source address to bind, or "" for the kernel's choice
        "started",  # monotonic time the connect started, s
        "state",  # WAITING, CONNECTING, HANDSHAKE, OPEN or CLOSED
        "to_confirm",  # scenario: item ids to confirm with the next ``recv``
        "token",  # the JWT, signed once and reused on reconnect
        "user",  # user id
        "writing",  # EPOLLOUT is armed
    )

    def __init__(self, index: int, user: str, source: str) -> None:
        self.index = index
        self.user = user
        self.source = source
        self.token: str | None = None
        self.sock: socket.socket | None = None
        self.state = WAITING
        self.epoch = 0
        self.started = 0.0
        self.inbuf = b""
        self.partial: tuple[int, list[bytes], int] | None = None
        self.out: list[bytes] = []
        self.writing = False
        self.inflight = 0
        self.seen: set[int] = set()
        self.to_confirm: list[str] = []
        self.expect: set[int] | None = None


class Handler(Protocol):
    """What the engine tells the scenario. Callbacks may call ``Engine.send``."""

    def on_open(self, conn: Conn, now: float) -> None: ...
    def on_fail(self, conn: Conn, reason: str, now: float) -> None: ...
    def on_text(self, conn: Conn, payload: bytes, now: float) -> None: ...
    def on_close(self, conn: Conn, reason: str, now: float) -> None: ...
    def on_turn(self, now: float) -> None: ...


class Engine:
    """Connections of one process on one epoll."""

    def __init__(
        self,
        target: Target,
        sign: Callable[[str], str],
        handler: Handler,
        *,
        max_pending: int = 512,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.target = target
        self.sign = sign
        self.handler = handler
        self.max_pending = max_pending
        self.handshake_timeout = handshake_timeout
        self.ep = select.epoll()
        self.by_fd: dict[int, Conn] = {}
        self.pending = 0  # connects and handshakes in flight
        self.schedule: list[tuple[float, int, Conn]] = []  # heap of (due time, tiebreak, conn)
        self._tiebreak = 0
        self._deadlines: deque[tuple[float, int, Conn]] = deque()  # (deadline, epoch, conn)
        self._dirty: list[Conn] = []
        self._watched: dict[int, Callable[[], None]] = {}

    # -- scheduling ---------------------------------------------------------

    def connect_at(self, conn: Conn, when: float) -> None:
        """Start ``conn`` at monotonic time ``when`` (or as soon as a slot frees)."""
        conn.state = WAITING
        self._tiebreak += 1
        heapq.heappush(self.schedule, (when, self._tiebreak, conn))

    def ramp(self, conns: list[Conn], rate: float, start: float) -> None:
        """Schedule ``conns`` at ``rate`` per second from ``start``; 0 means at once."""
        step = 1.0 / rate if rate > 0 else 0.0
        for i, conn in enumerate(conns):
            self.connect_at(conn, start + i * step)

    def watch(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` when ``fd`` (not a connection) is readable."""
        self._watched[fd] = callback
        self.ep.register(fd, select.EPOLLIN)

    # -- the loop -----------------------------------------------------------

    def poll(self, timeout: float) -> None:
        """One turn: start due connects, handle events, expire handshakes, flush."""
        now = time.monotonic()
        schedule = self.schedule
        while schedule and self.pending < self.max_pending and schedule[0][0] <= now:
            self._start(heapq.heappop(schedule)[2], now)
        if schedule and self.pending < self.max_pending:
            timeout = min(timeout, max(0.0, schedule[0][0] - now))
        elif self._dirty:
            timeout = 0.0
        events = self.ep.poll(timeout, 4096)
        now = time.monotonic()
        by_fd = self.by_fd
        for fd, mask in events:
            conn = by_fd.get(fd)
            if conn is None:
                callback = self._watched.get(fd)
                if callback is not None:
                    callback()
                continue
            state = conn.state
            if state == OPEN:
                if mask & select.EPOLLIN or mask & (select.EPOLLERR | select.EPOLLHUP):
                    self._read(conn, now)
                if mask & select.EPOLLOUT and conn.state == OPEN:
                    self._write(conn)
            elif state == CONNECTING:
                self._connected(conn, now)
            elif state == HANDSHAKE:
                self._handshake(conn, now)
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, epoch, conn = deadlines.popleft()
            if conn.epoch == epoch and conn.state in (CONNECTING, HANDSHAKE):
                self._fail(conn, "timeout", now)
        self.handler.on_turn(now)
        self.flush()

    def send(self, conn: Conn, payload: bytes) -> None:
        """Queue one text message (masked with the zero key) for this turn's flush."""
        if not conn.out:
            self._dirty.append(conn)
        conn.out.append(encode_frame(OP_TEXT, payload, mask_key=ZERO_KEY))

    def flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            if conn.state == OPEN and not conn.writing:
                self._write(conn)

    def close(self, conn: Conn, *, abort: bool = False) -> None:
        """Close locally, without telling the handler. ``abort`` sends RST, leaving
        no TIME_WAIT behind; otherwise the kernel sends FIN, like a dropped app."""
        sock = conn.sock
        if sock is None:
            return
        if conn.state in (CONNECTING, HANDSHAKE):
            self.pending -= 1
        self.by_fd.pop(sock.fileno(), None)
        if abort:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        sock.close()  # also removes it from the epoll set
        conn.sock = None
        conn.state = CLOSED
        conn.out.clear()
        conn.inbuf = b""
        conn.partial = None
        conn.writing = False

    # -- connection life ----------------------------------------------------

    def _start(self, conn: Conn, now: float) -> None:
        conn.epoch += 1
        conn.started = now
        conn.inbuf = b""
        conn.partial = None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            conn.state = CLOSED
            self.handler.on_fail(conn, _reason(exc), now)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if conn.source:
                sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((conn.source, 0))
            err = sock.connect_ex((self.target.host, self.target.port))
        except OSError as exc:
            sock.close()
            conn.state = CLOSED
            self.handler.on_fail(conn, _reason(exc), now)
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            conn.state = CLOSED
            self.handler.on_fail(conn, errno.errorcode.get(err, str(err)), now)
            return
        conn.sock = sock
        conn.state = CONNECTING
        self.pending += 1
        self.by_fd[sock.fileno()] = conn
        self.ep.register(sock.fileno(), select.EPOLLOUT)
        self._deadlines.append((now + self.handshake_timeout, conn.epoch, conn))

    def _connected(self, conn: Conn, now: float) -> None:
        sock = conn.sock
        assert sock is not None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fail(conn, errno.errorcode.get(err, str(err)), now)
            return
        if conn.token is None:
            conn.token = self.sign(conn.user)
        try:
            sock.send(self.target.request(conn.token))
        except OSError as exc:
            self._fail(conn, _reason(exc), now)
            return
        conn.state = HANDSHAKE
        self.ep.modify(sock.fileno(), select.EPOLLIN)

    def _handshake(self, conn: Conn, now: float) -> None:
        sock = conn.sock
        assert sock is not None
        try:
            data = sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(conn, _reason(exc), now)
            return
        if not data:
            self._fail(conn, "closed during handshake", now)
            return
        buf = conn.inbuf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._fail(conn, "response head too large", now)
            else:
                conn.inbuf = buf
            return
        head = buf[:end]
        status = head[9:12]
        if head[:5] != b"HTTP/" or status != b"101":
            reason = f"http {status.decode('latin-1')}" if head[:5] == b"HTTP/" else "not http"
            self._fail(conn, reason, now)
            return
        if _WS_ACCEPT not in head:
            self._fail(conn, "bad Sec-WebSocket-Accept", now)
            return
        conn.inbuf = b""
        conn.state = OPEN
        self.pending -= 1
        self.handler.on_open(conn, now)
        rest = buf[end + 4 :]
        if rest:
            self._frames(conn, rest, now)

    def _fail(self, conn: Conn, reason: str, now: float) -> None:
        self.close(conn, abort=True)
        self.handler.on_fail(conn, reason, now)

    def _lost(self, conn: Conn, reason: str, now: float) -> None:
        self.close(conn, abort=True)
        self.handler.on_close(conn, reason, now)

    def _read(self, conn: Conn, now: float) -> None:
        sock = conn.sock
        assert sock is not None
        try:
            data = sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(conn, _reason(exc), now)
            return
        if not data:
            self._lost(conn, "eof", now)
            return
        self._frames(conn, conn.inbuf + data if conn.inbuf else data, now)

    def _frames(self, conn: Conn, data: bytes, now: float) -> None:
        try:
            frames, used = parse_frames(data, MAX_MESSAGE, masked=False)
            messages, conn.partial = assemble(frames, conn.partial, MAX_MESSAGE)
        except ProtocolError as exc:
            self._lost(conn, f"protocol error {exc.code}: {exc.reason}", now)
            return
        conn.inbuf = data[used:]
        on_text = self.handler.on_text
        for opcode, payload in messages:
            if opcode == OP_TEXT:
                on_text(conn, payload, now)
            elif opcode == OP_PING:
                if not conn.out:
                    self._dirty.append(conn)
                conn.out.append(encode_frame(OP_PONG, payload, mask_key=ZERO_KEY))
            elif opcode == OP_CLOSE:
                try:
                    code, _ = parse_close(payload)
                except ProtocolError:
                    code = 1002
                # RFC 6455 §5.5.1: echo the close, then the server closes TCP;
                # waiting for that would cost a turn per connection, so just go.
                self._write_now(conn, encode_frame(OP_CLOSE, payload[:2], mask_key=ZERO_KEY))
                self._lost(conn, f"close {code}", now)
                return
            if conn.state != OPEN:
                return

    def _write_now(self, conn: Conn, frame: bytes) -> None:
        try:
            assert conn.sock is not None
            conn.sock.send(b"".join((*conn.out, frame)))
        except OSError:
            pass

    def _write(self, conn: Conn) -> None:
        sock = conn.sock
        assert sock is not None
        out = conn.out
        if not out:
            if conn.writing:
                conn.writing = False
                self.ep.modify(sock.fileno(), select.EPOLLIN)
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(conn, _reason(exc), time.monotonic())
            return
        out.clear()
        if sent < len(data):
            out.append(data[sent:])
            if not conn.writing:
                conn.writing = True
                self.ep.modify(sock.fileno(), select.EPOLLIN | select.EPOLLOUT)
        elif conn.writing:
            conn.writing = False
            self.ep.modify(sock.fileno(), select.EPOLLIN)


def _reason(exc: OSError) -> str:
    if exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__
