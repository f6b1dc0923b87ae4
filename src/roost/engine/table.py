"""The connection table: one small record per socket, indexed by fd.

Rules:
- An idle open connection is a ``Conn`` whose buffers are all None: no task,
  no coroutine, no timer handle, no bytes. That is what keeps it near the
  ~512-byte budget (docs/memory.md); every slot added here is paid a million
  times.
- ``rbuf`` exists only while a frame or request head is partial, ``wbuf``
  only while output waits for the next flush or for the socket to drain,
  ``partial`` only while a fragmented message is in flight.
- A closed Conn keeps ``fd = -1`` so late callbacks (a commit finishing after
  the peer left) can tell it is gone.
"""

from __future__ import annotations

# Connection states. Transitions: HANDSHAKE -> LOADING -> OPEN -> CLOSING;
# HANDSHAKE -> LINGER (an HTTP answer); any -> FLUSH_CLOSE -> gone.
HANDSHAKE = 0  # reading the HTTP request head
LOADING = 1  # upgraded; the inbox backlog is being read, live items wait for it
OPEN = 2  # upgraded and current: live items are delivered as committed
CLOSING = 3  # our close frame is sent; waiting for the peer's (RFC 6455 §7.1.2)
LINGER = 4  # an HTTP answer is sent; reading until the peer's EOF
FLUSH_CLOSE = 5  # close the socket as soon as the output is written


class Conn:
    __slots__ = ("fd", "partial", "rate", "rbuf", "state", "user", "wbuf")

    def __init__(self, fd: int) -> None:
        self.fd = fd  # the socket's file descriptor; -1 once closed
        self.state = HANDSHAKE  # one of the states above
        self.user: str | None = None  # the authenticated user id, once upgraded
        self.rbuf: bytes | None = None  # unparsed input: a partial frame or head
        self.wbuf: list[bytes] | None = None  # output not yet written to the socket
        self.partial: tuple[int, list[bytes], int] | None = None  # fragments in flight
        self.rate = 0  # (unix second << 20) | frames seen in that second

    def __repr__(self) -> str:
        return f"<Conn fd={self.fd} state={self.state} user={self.user}>"
