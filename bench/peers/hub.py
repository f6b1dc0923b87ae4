"""Protocol v1 for 1:1 messages, in memory: the part both peers share.

The peers exist to put roost next to servers built the way each library
recommends, so the WebSocket layer is theirs and only the messaging rules
(docs/protocol.md) live here, once.

Rules:
- One live connection per user. A second one replaces the first, which is
  closed with 4001; the newcomer receives every unconfirmed inbox item.
- ``send`` is acked as soon as the item is in the recipient's inbox (memory
  only: the peers get the advantage of not writing to disk).
- Items stay in the inbox until ``recv`` confirms them; each confirmed message
  produces a receipt for its sender, itself an inbox item.
- Faults (``--fault``) exist to prove the load generator notices them:
  ``drop-every=N`` acks every Nth message but never stores it (loss),
  ``dup-every=N`` delivers every Nth message twice (a duplicate).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import msgspec

try:
    import roost  # noqa: F401
except ImportError:  # running from a checkout without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from roost.auth import is_user_id, load_secret, verify_token
from roost.errors import AuthError

MAX_BODY = 65536
"""Bytes of ``body`` as sent (protocol ``max_body``)."""
MAX_FRAME = 1 << 20
"""Largest frame or message accepted (protocol ``max_frame``)."""
MAX_RECV_IDS = 1000
BACKLOG = 4096
"""listen() backlog: asyncio's default of 100 drops SYNs during a ramp (1 s retransmits)."""


class Peer(Protocol):
    """One WebSocket connection, as a library exposes it."""

    def send_text(self, data: bytes) -> None:
        """Queue one text frame; never blocks."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake with ``code``."""


class _Request(msgspec.Struct):
    op: str
    to: str | None = None
    cid: str | None = None
    body: msgspec.Raw = msgspec.Raw()
    ids: list[str] | None = None


_decode_request = msgspec.json.Decoder(_Request).decode
_encode = msgspec.json.encode


def authenticate(secret: bytes, target: str) -> str:
    """The user id of the request target ``/ws?token=JWT``.

    Raises ``AuthError`` (401) for a bad token, ``LookupError`` for another path.
    """
    parts = urlsplit(target)
    if parts.path != "/ws":
        raise LookupError(parts.path)
    tokens = parse_qs(parts.query).get("token")
    return verify_token(secret, tokens[0] if tokens else None)


def error_body(reason: str) -> bytes:
    return _encode({"error": reason})


class Hub:
    """Users, their inboxes and their live connection."""

    def __init__(self, drop_every: int = 0, dup_every: int = 0) -> None:
        self.online: dict[str, Peer] = {}
        # user -> {item id: (frame text, sender for a message / None for a receipt)}
        self.inbox: dict[str, dict[str, tuple[bytes, str | None]]] = {}
        self._last_id = 0
        self._messages = 0
        self.drop_every = drop_every
        self.dup_every = dup_every

    def _new_id(self) -> tuple[str, int]:
        """A 20-hex-digit id that sorts in creation order, and its time in ms."""
        now_ms = int(time.time() * 1000)
        self._last_id = max(self._last_id + 1, now_ms << 32)
        return f"{self._last_id:020x}", now_ms

    def attach(self, user: str, peer: Peer) -> None:
        old = self.online.get(user)
        self.online[user] = peer
        if old is not None:
            old.close(4001, "replaced by a newer connection")
        for text, _sender in self.inbox.get(user, {}).values():
            peer.send_text(text)

    def detach(self, user: str, peer: Peer) -> None:
        if self.online.get(user) is peer:
            del self.online[user]

    def _store(self, user: str, item_id: str, text: bytes, sender: str | None) -> None:
        self.inbox.setdefault(user, {})[item_id] = (text, sender)
        peer = self.online.get(user)
        if peer is not None:
            peer.send_text(text)
            if sender is not None and self.dup_every and self._messages % self.dup_every == 0:
                peer.send_text(text)

    def handle(self, user: str, peer: Peer, data: bytes) -> None:
        """One text message from ``user``: answer or route it."""
        try:
            req = _decode_request(data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            self._error(peer, _read_cid(data), "bad_request", str(exc))
            return
        if req.op == "send":
            self._send(user, peer, req)
        elif req.op == "recv":
            self._recv(user, peer, req)
        else:
            self._error(peer, req.cid, "bad_request", f"unknown op {req.op!r}")

    def _send(self, user: str, peer: Peer, req: _Request) -> None:
        cid = req.cid
        if cid is None or not 1 <= len(cid) <= 128:
            self._error(peer, cid, "bad_request", "cid must be a string of 1-128 characters")
            return
        if not is_user_id(req.to):
            self._error(peer, cid, "bad_request", "bad user id in 'to'")
            return
        body = bytes(req.body)
        if not body:
            self._error(peer, cid, "bad_request", "missing body")
            return
        if len(body) > MAX_BODY:
            reason = f"body is {len(body)} bytes, the limit is {MAX_BODY}"
            self._error(peer, cid, "too_large", reason)
            return
        to = str(req.to)
        item_id, ts = self._new_id()
        self._messages += 1
        peer.send_text(
            b'{"op":"ack","cid":%b,"id":"%b","ts":%d}' % (_encode(cid), item_id.encode(), ts)
        )
        if self.drop_every and self._messages % self.drop_every == 0:
            return
        text = b'{"op":"msg","id":"%b","from":"%b","to":"%b","ts":%d,"body":%b}' % (
            item_id.encode(),
            user.encode(),
            to.encode(),
            ts,
            body,
        )
        self._store(to, item_id, text, user)

    def _recv(self, user: str, peer: Peer, req: _Request) -> None:
        ids = req.ids
        if ids is None or len(ids) > MAX_RECV_IDS:
            self._error(peer, None, "bad_request", "ids must be a list of at most 1000 ids")
            return
        box = self.inbox.get(user)
        if not box:
            return
        for ref in ids:
            item = box.pop(ref, None)
            if item is None or item[1] is None:
                continue  # unknown, already confirmed, or a receipt: no receipt for it
            item_id, ts = self._new_id()
            text = (
                b'{"op":"receipt","id":"%b","ref":"%b","by":"%b","status":"delivered","ts":%d}'
                % (item_id.encode(), ref.encode(), user.encode(), ts)
            )
            self._store(item[1], item_id, text, None)

    @staticmethod
    def _error(peer: Peer, cid: str | None, code: str, reason: str) -> None:
        peer.send_text(_encode({"op": "error", "cid": cid, "code": code, "reason": reason}))


def _read_cid(data: bytes) -> str | None:
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    cid = obj.get("cid") if isinstance(obj, dict) else None
    return cid if isinstance(cid, str) else None


def parse_args(name: str) -> argparse.Namespace:
    """The command line both peers share."""
    parser = argparse.ArgumentParser(
        prog=name, description=f"A protocol-v1 peer server on {name} (in-memory inbox)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--data-dir", type=Path, default=Path("roost-data"))
    parser.add_argument("--secret-file", type=Path, default=None)
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=N",
        help="break the peer on purpose: drop-every=N (ack, never deliver) or dup-every=N",
    )
    args = parser.parse_args()
    args.drop_every = args.dup_every = 0
    for fault in args.fault:
        kind, _, value = fault.partition("=")
        if kind not in ("drop-every", "dup-every") or not value.isdigit() or int(value) < 1:
            parser.error(f"bad --fault {fault!r}: use drop-every=N or dup-every=N")
        setattr(args, kind.replace("-", "_"), int(value))
    args.secret = load_secret(args.data_dir, args.secret_file)
    return args


__all__ = [
    "BACKLOG",
    "MAX_FRAME",
    "AuthError",
    "Hub",
    "Peer",
    "authenticate",
    "error_body",
    "parse_args",
]
