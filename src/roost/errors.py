"""The one tree of roost's exceptions.

Whose fault an error is decides what happens next, so the tree splits there
first, as h11 does::

    RoostError
     ├── RemoteError            the peer broke a rule; answer it and carry on or close
     │    ├── ProtocolError     RFC 6455 violation -> close with .code
     │    ├── HandshakeError    bad HTTP request -> answer .status and close
     │    │    └── AuthError    bad or missing token -> 401
     │    └── RequestError      a bad protocol-v1 op -> an "error" frame, stay open
     └── LocalError             our side failed or was misused
          ├── ConfigError       bad settings: refuse to start, say which one
          └── StoreError        the inbox could not be written: "internal", no ack

Nothing here imports I/O, so proto/ can raise these.
"""

from __future__ import annotations


class RoostError(Exception):
    """Root of every error roost raises on purpose."""


class RemoteError(RoostError):
    """The peer's fault: its input broke a rule of HTTP, RFC 6455 or protocol v1."""


class ProtocolError(RemoteError):
    """A WebSocket-level violation; the connection must close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class HandshakeError(RemoteError):
    """The upgrade request cannot be accepted; answer ``status`` and close."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


class AuthError(HandshakeError):
    """The token is missing, forged, expired or malformed (HTTP 401)."""

    def __init__(self, reason: str) -> None:
        super().__init__(401, reason)


class RequestError(RemoteError):
    """A protocol-v1 op that cannot be served; the connection stays open.

    ``code`` is one of the error codes of docs/protocol.md and ``cid`` the
    request's cid when it could be read.
    """

    def __init__(self, code: str, reason: str, cid: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.cid = cid


class LocalError(RoostError):
    """Our side failed or was misused."""


class ConfigError(LocalError):
    """A setting is invalid; roost refuses to start and names it."""


class StoreError(LocalError):
    """The durable inbox could not be written; nothing was acked."""
