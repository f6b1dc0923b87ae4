"""Worker-to-worker links: local SOCK_SEQPACKET sockets, batched per loop turn.

Rules:
- Each worker listens on an abstract Unix address named after the supervisor
  and its index (made by the supervisor, see ``link_listener``); it connects
  to a peer the first time it has something for it. A link carries traffic
  one way: a worker sends on the links it opened and receives on the links
  it accepted.
- ``send`` only queues; everything queued in a loop turn is written at its
  end, one packet per peer (codec.split_batches), so a thousand messages for a
  peer cost one ``sendmsg``.
- A peer that cannot be reached (restarting after a crash) makes its queued
  messages undeliverable: they go back to the caller's ``on_undeliverable``,
  which fails them explicitly. Nothing is retried here; what must survive a
  crash (receipts) is kept in the store's outbox by the caller.
- Links are few (one per peer), so they use ordinary asyncio readers and
  writers rather than the connection engine's epoll table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from roost.workers.codec import HANDOFF, HELLO, decode_packet, encode_packet, split_batches

log = logging.getLogger("roost.links")

RECV_SIZE = 262_144  # bytes; above codec.MAX_PACKET
RECVS_PER_TURN = 64  # packets read from one link before yielding to the loop

MessageHandler = Callable[[int, list[Any], int | None], None]
"""(source worker, message, the fd a HANDOFF carries or None)."""
UndeliverableHandler = Callable[[int, list[tuple[Any, ...]], list[int]], None]
"""(destination worker, messages that did not go out, their fds, which the
handler now owns and must close)."""


def link_address(namespace: str, index: int) -> str:
    return f"\0roost-{namespace}-{index}"


def link_listener(namespace: str, index: int) -> socket.socket:
    """Worker ``index``'s link listener. The supervisor makes them all before
    forking, so a peer can connect from the first instant, and a restarting
    worker's backlog holds new links until it is back."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(link_address(namespace, index))
    sock.listen(256)
    sock.setblocking(False)
    return sock


class Links:
    def __init__(
        self,
        index: int,
        namespace: str,
        on_message: MessageHandler,
        on_undeliverable: UndeliverableHandler,
        on_link_down: Callable[[int], None],
    ) -> None:
        self.index = index
        self._namespace = namespace
        self._on_message = on_message
        self._on_undeliverable = on_undeliverable
        self._on_link_down = on_link_down
        self._loop = asyncio.get_running_loop()
        self._listener: socket.socket | None = None
        self._out: dict[int, socket.socket] = {}  # peer -> the link we send on
        self._queued: dict[int, tuple[list[tuple[Any, ...]], list[int]]] = {}
        self._blocked: dict[int, list[tuple[bytes, list[int]]]] = {}  # peer -> unsent packets
        self._inbound: set[socket.socket] = set()
        self._flush_scheduled = False
        self.packets_out = 0
        self.packets_in = 0

    def start(self, listener: socket.socket) -> None:
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._accept)

    def close(self) -> None:
        for sock in [*self._out.values(), *self._inbound]:
            self._loop.remove_reader(sock.fileno())
            self._loop.remove_writer(sock.fileno())
            sock.close()
        if self._listener is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
        self._out.clear()
        self._inbound.clear()

    # ---- sending ---------------------------------------------------------

    def send(self, peer: int, message: tuple[Any, ...], fd: int | None = None) -> None:
        """Queue a message for ``peer``; a HANDOFF passes ``fd``, which this
        module closes once it is sent or found undeliverable."""
        queued = self._queued.get(peer)
        if queued is None:
            queued = self._queued[peer] = ([], [])
        queued[0].append(message)
        if fd is not None:
            queued[1].append(fd)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        for peer, (messages, fds) in queued.items():
            sock = self._connect(peer)
            if sock is None:
                self._on_undeliverable(peer, messages, fds)
                continue
            packets = split_batches(messages, fds)
            if peer in self._blocked:
                self._blocked[peer].extend(packets)
                continue
            self._write(peer, sock, packets)

    def _write(
        self, peer: int, sock: socket.socket, packets: list[tuple[bytes, list[int]]]
    ) -> None:
        for i, (data, fds) in enumerate(packets):
            try:
                if fds:
                    socket.send_fds(sock, [data], fds)
                else:
                    sock.send(data)
            except (BlockingIOError, InterruptedError):
                rest = packets[i:]
                if peer not in self._blocked:
                    self._blocked[peer] = rest
                    self._loop.add_writer(sock.fileno(), self._unblock, peer)
                else:
                    self._blocked[peer][:0] = rest
                return
            except OSError as exc:
                log.warning("link to worker %d failed: %s", peer, exc.strerror)
                for rest_data, rest_fds in packets[i:]:
                    self._on_undeliverable(peer, _messages_of(rest_data), rest_fds)
                self._link_down(peer)
                return
            self.packets_out += 1
            _close_fds(fds)

    def _unblock(self, peer: int) -> None:
        sock = self._out.get(peer)
        packets = self._blocked.pop(peer, [])
        if sock is None:
            return
        self._loop.remove_writer(sock.fileno())
        self._write(peer, sock, packets)

    def _connect(self, peer: int) -> socket.socket | None:
        sock = self._out.get(peer)
        if sock is not None:
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(link_address(self._namespace, peer))
            sock.send(encode_packet([(HELLO, self.index)]))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        self._out[peer] = sock
        # We never read from an outgoing link; readable means the peer is gone.
        self._loop.add_reader(sock.fileno(), self._check_alive, peer)
        return sock

    def _check_alive(self, peer: int) -> None:
        sock = self._out.get(peer)
        if sock is None:
            return
        try:
            data = sock.recv(1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._link_down(peer)

    def _link_down(self, peer: int) -> None:
        sock = self._out.pop(peer, None)
        if sock is None:
            return
        self._loop.remove_reader(sock.fileno())
        self._loop.remove_writer(sock.fileno())
        sock.close()
        for data, fds in self._blocked.pop(peer, []):
            self._on_undeliverable(peer, _messages_of(data), fds)
        self._on_link_down(peer)

    # ---- receiving -------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            self._inbound.add(sock)
            source = [-1]  # set by the HELLO that opens every link
            self._loop.add_reader(sock.fileno(), self._receive, sock, source)

    def _receive(self, sock: socket.socket, source: list[int]) -> None:
        for _ in range(RECVS_PER_TURN):
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, RECV_SIZE, 253)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._loop.remove_reader(sock.fileno())
                self._inbound.discard(sock)
                sock.close()
                return
            self.packets_in += 1
            fd_iter = iter(fds)
            for message in decode_packet(data):
                if message[0] == HELLO:
                    source[0] = message[1]
                    continue
                fd = next(fd_iter, None) if message[0] == HANDOFF else None
                self._on_message(source[0], message, fd)


def _messages_of(data: bytes) -> list[tuple[Any, ...]]:
    return [tuple(m) for m in decode_packet(data)]


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
