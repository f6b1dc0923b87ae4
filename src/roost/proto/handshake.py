"""HTTP/1.1 requests and the WebSocket opening handshake (RFC 6455 §4), sans-IO.

Rules:
- ``parse_request`` is called with everything read so far and either returns a
  complete request or None (read more). There is no parser object: a
  connection in its handshake keeps only its bytes.
- The request head is capped (``max_header_bytes``, answer 431) and a body is
  accepted only with a Content-Length under ``max_body`` (413); chunked bodies
  are refused (411), which is all roost's small JSON API needs.
- Every answer closes the connection (``Connection: close``): a WebSocket
  client reconnects anyway, and a keep-alive HTTP connection would be state to
  keep per socket.

Hand-written rather than h11: parsing one complete head with ``bytes.split``
is a few microseconds and keeps nothing per connection, and a reconnect storm
makes the handshake a hot path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from roost.errors import HandshakeError
from roost.proto.messages import encode

__all__ = [
    "Request",
    "accept_key",
    "check_upgrade",
    "http_response",
    "json_error",
    "parse_request",
    "switching_protocols",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@dataclass(slots=True)
class Request:
    """One parsed HTTP request. Header names are lowercased; repeated headers
    are joined with ", " as RFC 9110 §5.3 allows."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


def parse_request(
    data: bytes, max_header_bytes: int = 8192, max_body: int = 65536
) -> tuple[Request, int] | None:
    """Parse one request from the start of ``data``.

    Returns (request, bytes consumed), or None when more bytes are needed.
    Raises ``HandshakeError`` with the status to answer: 400 for a malformed
    request, 411 for a chunked body, 413 for a body over ``max_body``, 431 for
    a head over ``max_header_bytes``. The caller answers and closes.
    """
    end = data.find(b"\r\n\r\n", 0, max_header_bytes + 4)
    if end < 0:
        if len(data) >= max_header_bytes + 4:
            raise HandshakeError(431, "request header too large")
        return None
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise HandshakeError(400, "malformed request line")
    method_b, target_b, _version = parts
    if not method_b or not set(method_b) <= _TOKEN_CHARS or not target_b:
        raise HandshakeError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not set(name) <= _TOKEN_CHARS:
            # Also rejects obsolete line folding (a line starting with a space).
            raise HandshakeError(400, "malformed header line")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    target = target_b.decode("latin-1")
    try:
        split = urlsplit(target)
    except ValueError:
        raise HandshakeError(400, "malformed request target") from None
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    consumed = end + 4
    body = b""
    if "transfer-encoding" in headers:
        raise HandshakeError(411, "chunked bodies are not supported; send Content-Length")
    length_text = headers.get("content-length")
    if length_text is not None:
        if not (length_text.isascii() and length_text.isdigit()):
            raise HandshakeError(400, "malformed Content-Length")
        # Past 18 digits it is over any limit; int() would refuse >4300 digits.
        length = int(length_text) if len(length_text) <= 18 else max_body + 1
        if length > max_body:
            raise HandshakeError(413, f"body of {length} bytes, the limit is {max_body}")
        if len(data) - consumed < length:
            return None
        body = bytes(data[consumed : consumed + length])
        consumed += length
    return Request(method_b.decode("ascii"), target, split.path, query, headers, body), consumed


def _has_token(header: str | None, token: str) -> bool:
    return header is not None and token in (t.strip().lower() for t in header.split(","))


def check_upgrade(request: Request) -> str:
    """Check a WebSocket upgrade request (RFC 6455 §4.2.1) and return its key.

    Raises ``HandshakeError``: 400 naming what is missing, 426 (with a
    ``Sec-WebSocket-Version: 13`` header) for another protocol version.
    """
    if request.method != "GET":
        raise HandshakeError(400, "a WebSocket upgrade must be a GET")
    headers = request.headers
    if not _has_token(headers.get("upgrade"), "websocket"):
        raise HandshakeError(400, "missing Upgrade: websocket")
    if not _has_token(headers.get("connection"), "upgrade"):
        raise HandshakeError(400, "missing Connection: Upgrade")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(
            426, "unsupported websocket version", (("Sec-WebSocket-Version", "13"),)
        )
    key = headers.get("sec-websocket-key")
    if key is None:
        raise HandshakeError(400, "missing Sec-WebSocket-Key")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):  # ValueError: not ASCII
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    return key


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a request key (RFC 6455 §4.2.2 step 5.4)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def switching_protocols(key: str) -> bytes:
    """The 101 answer that completes the handshake; no extension is offered."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode("ascii") + b"\r\n\r\n"
    )


def http_response(
    status: int,
    body: bytes = b"",
    content_type: str = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    if body or status not in (101, 204):
        head.append(f"Content-Type: {content_type}")
        head.append(f"Content-Length: {len(body)}")
    head.extend(f"{name}: {value}" for name, value in headers)
    head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def json_error(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The JSON ``{"error": ...}`` answer every HTTP failure gets."""
    return http_response(status, encode({"error": message}), headers=headers)
