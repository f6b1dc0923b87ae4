"""RFC 6455 framing, sans-IO: bytes in, frames and messages out.

Rules:
- Parsing is batch-oriented: ``parse_frames`` takes everything a ``read`` gave
  and returns every complete frame in it, plus how many bytes it used. The
  caller keeps the leftover bytes; there is no parser object per connection,
  because a million idle connections must not each hold one.
- A frame's declared length is checked against the limit as soon as its
  header is readable, before any of the payload is buffered (close 1009).
- Every violation raises ``ProtocolError`` with the close code to send:
  1002 for a protocol error, 1007 for bad UTF-8, 1009 for too big.
- Reassembly state between fragments is a small tuple the caller stores only
  while a fragmented message is in flight (``Partial``).

Hand-written rather than borrowed: the per-connection read path must stay a
few function calls with no objects kept between reads, which no library here
offers.
"""

from __future__ import annotations

from enum import IntEnum

from roost.errors import ProtocolError

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "CloseCode",
    "Opcode",
    "Partial",
    "apply_mask",
    "assemble",
    "encode_close",
    "encode_frame",
    "parse_close",
    "parse_frames",
]


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 §5.2)."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


# Plain ints for the hot path: comparing IntEnum members costs an attribute lookup.
OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA
_KNOWN_OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))


class CloseCode(IntEnum):
    """Close codes: RFC 6455 §7.4.1 and roost's own 4000-range codes."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    REPLACED = 4001
    DISCONNECTED = 4003
    SLOW_CONSUMER = 4008


# RFC 6455 §7.4.1/§7.4.2: codes a peer may put on the wire. 1005, 1006 and 1015
# are reserved for reporting and must never be sent.
def _close_code_allowed(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


Frame = tuple[int, bool, bytes]
"""(opcode, fin, unmasked payload)."""

Partial = tuple[int, list[bytes], int]
"""A fragmented message in flight: (first opcode, payload parts, total size)."""

_ZERO_KEY = b"\x00\x00\x00\x00"


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (RFC 6455 §5.3).

    Done as one XOR of two big integers: C speed without a C extension.
    Masking is its own inverse, so this both masks and unmasks.
    """
    n = len(data)
    if n == 0 or key == _ZERO_KEY:
        return bytes(data)
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def parse_frames(data: bytes, max_size: int, *, masked: bool = True) -> tuple[list[Frame], int]:
    """Parse every complete frame at the start of ``data``.

    ``masked`` is True on the server side: client frames must be masked
    (§5.1), and a client must reject masked server frames, so a client passes
    False. Returns the frames, unmasked, and the number of bytes consumed; the
    caller keeps ``data[consumed:]`` for the next read.

    Raises ``ProtocolError``: 1002 for reserved bits, an unknown opcode, a
    fragmented or oversized (>125 bytes) control frame, a wrong masking or a
    64-bit length with its top bit set; 1009 for a payload over ``max_size``.
    The caller closes the connection with ``exc.code``.
    """
    frames: list[Frame] = []
    pos = 0
    end = len(data)
    while end - pos >= 2:
        b0 = data[pos]
        b1 = data[pos + 1]
        if b0 & 0x70:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "reserved bits set")
        opcode = b0 & 0x0F
        if opcode not in _KNOWN_OPCODES:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        fin = bool(b0 & 0x80)
        length = b1 & 0x7F
        if opcode >= OP_CLOSE:
            if not fin:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "control frame too long")
        start = pos + 2
        if length == 126:
            if end - pos < 4:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            start = pos + 4
        elif length == 127:
            if end - pos < 10:
                break
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            if length >> 63:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "invalid 64-bit length")
            start = pos + 10
        if length > max_size:
            raise ProtocolError(
                CloseCode.MESSAGE_TOO_BIG, f"frame of {length} bytes, the limit is {max_size}"
            )
        if b1 & 0x80:
            if not masked:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "server frame is masked")
            if end - start < 4 + length:
                break
            key = data[start : start + 4]
            start += 4
            payload = apply_mask(data[start : start + length], key)
        else:
            if masked:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "client frame is not masked")
            if end - start < length:
                break
            payload = bytes(data[start : start + length])
        frames.append((opcode, fin, payload))
        pos = start + length
    return frames, pos


def assemble(
    frames: list[Frame], partial: Partial | None, max_size: int
) -> tuple[list[tuple[int, bytes]], Partial | None]:
    """Turn frames into complete messages, reassembling fragments (§5.4).

    Control frames may arrive between the fragments of a data message and are
    returned in arrival order. Text messages are checked to be UTF-8 (§8.1).
    Returns (messages as (opcode, payload), the new partial state, or None when
    no fragmented message is in flight).

    Raises ``ProtocolError``: 1002 for a continuation with nothing to continue
    or a new data frame inside a fragmented message, 1007 for a text message
    that is not UTF-8, 1009 when fragments add up to more than ``max_size``.
    """
    messages: list[tuple[int, bytes]] = []
    for opcode, fin, payload in frames:
        if opcode >= OP_CLOSE:
            messages.append((opcode, payload))
            continue
        if opcode == OP_CONT:
            if partial is None:
                raise ProtocolError(CloseCode.PROTOCOL_ERROR, "continuation without a message")
            first, parts, size = partial
            size += len(payload)
            if size > max_size:
                raise ProtocolError(CloseCode.MESSAGE_TOO_BIG, f"message over {max_size} bytes")
            parts.append(payload)
            if not fin:
                partial = (first, parts, size)
                continue
            partial = None
            opcode, payload = first, b"".join(parts)
        elif partial is not None:
            raise ProtocolError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
        elif not fin:
            partial = (opcode, [payload], len(payload))
            continue
        if opcode == OP_TEXT:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(CloseCode.INVALID_DATA, "invalid UTF-8") from None
        messages.append((opcode, payload))
    return messages, partial


def encode_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask_key: bytes | None = None
) -> bytes:
    """Serialize one frame. Servers send unmasked frames; a client passes a
    4-byte ``mask_key`` (``b"\\0\\0\\0\\0"`` is legal and skips the XOR)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask_key is not None else 0
    if n < 126:
        header = bytes((b0, mask_bit | n))
    elif n < 65536:
        header = bytes((b0, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((b0, mask_bit | 127)) + n.to_bytes(8, "big")
    if mask_key is None:
        return header + payload
    return header + mask_key + apply_mask(payload, mask_key)


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame payload: 2-byte code and a UTF-8 reason cut to fit 125 bytes."""
    raw = reason.encode("utf-8")[:123]
    # A cut may split a multi-byte character; drop the broken tail (§5.5.1).
    raw = raw.decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + raw


def parse_close(payload: bytes) -> tuple[int, str]:
    """Read a close frame payload (§5.5.1, §7.4).

    An empty payload means no status: returns (1005, ""). Raises
    ``ProtocolError`` 1002 for a 1-byte payload or a code that may not be
    sent, and 1007 for a reason that is not UTF-8.
    """
    if not payload:
        return CloseCode.NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close payload of 1 byte")
    code = int.from_bytes(payload[:2], "big")
    if not _close_code_allowed(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason
