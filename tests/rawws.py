"""A deliberately dumb WebSocket client over a blocking socket, for sending
what well-behaved libraries refuse to send: unmasked frames, reserved bits,
bad opcodes, split headers."""

from __future__ import annotations

import base64
import json
import os
import socket
from collections import deque
from typing import Any

from roost.proto.frames import OP_CLOSE, OP_TEXT, apply_mask, parse_close, parse_frames


def http_exchange(
    port: int, request: bytes, timeout: float = 5
) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes, read the whole answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def upgrade_request(path: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


class RawWS:
    def __init__(self, port: int, token: str | None, extra: str = "", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        path = "/ws" if token is None else f"/ws?token={token}"
        self.sock.sendall(upgrade_request(path, extra))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, "server closed during the handshake"
            data += chunk
        head, _, self.buf = data.partition(b"\r\n\r\n")
        self.frames: deque[tuple[int, bytes]] = deque()
        self.status = int(head.split(b" ")[1])
        assert self.status == 101, head

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
    ) -> None:
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        if n < 126:
            header = bytes((b0, (0x80 if mask else 0) | n))
        elif n < 65536:
            header = bytes((b0, (0x80 if mask else 0) | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((b0, (0x80 if mask else 0) | 127)) + n.to_bytes(8, "big")
        if mask:
            key = os.urandom(4)
            header += key
            payload = apply_mask(payload, key)
        self.sock.sendall(header + payload)

    def send_json(self, obj: Any) -> None:
        self.send_frame(OP_TEXT, json.dumps(obj).encode())

    def recv_frame(self) -> tuple[int, bytes]:
        while not self.frames:
            frames, used = parse_frames(self.buf, 1 << 24, masked=False)
            self.frames.extend((opcode, payload) for opcode, _fin, payload in frames)
            self.buf = self.buf[used:]
            if self.frames:
                break
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buf += chunk
        return self.frames.popleft()

    def recv_json(self) -> Any:
        opcode, payload = self.recv_frame()
        assert opcode == OP_TEXT, (opcode, payload)
        return json.loads(payload)

    def recv_close(self) -> tuple[int, str]:
        """Skip data frames until the close frame; return its code and reason."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == OP_CLOSE:
                return parse_close(payload)

    def at_eof(self) -> bool:
        """True once the server has closed TCP (after its close frame)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
