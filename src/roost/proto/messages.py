"""Protocol v1 ops (docs/protocol.md): decode and validate what clients send,
encode what the server sends. Sans-IO.

msgspec does the JSON: it decodes straight into typed structs, validates as it
goes, and keeps ``body`` as the raw bytes the client sent (``msgspec.Raw``), so
a message body is never decoded or re-encoded on its way through roost.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from roost.errors import RequestError

__all__ = [
    "MAX_PRESENCE_USERS",
    "MAX_RECV_IDS",
    "Ack",
    "ErrorFrame",
    "GroupMsg",
    "Msg",
    "Presence",
    "Receipt",
    "Recv",
    "Send",
    "decode_client_op",
    "encode",
    "encode_ack",
    "encode_group_msg",
    "encode_msg",
    "encode_presence",
    "encode_receipt",
]

MAX_RECV_IDS = 1000
"""Most ids one ``recv`` may confirm: bounds the work one frame can ask for."""
MAX_PRESENCE_USERS = 256
"""Most users one ``presence`` request may ask about: it may ask every worker."""

# \Z, not $: "$" also matches before a trailing newline, which would let "bob\n" in.
UserId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._@-]{1,64}\Z")]
Cid = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
ItemId = Annotated[str, msgspec.Meta(max_length=64)]


class Send(msgspec.Struct, tag="send", tag_field="op", frozen=True):
    """``{"op":"send","to":...,"cid":...,"body":...}``, or ``"group"`` instead
    of ``"to"``: exactly one of the two (``decode_client_op`` checks)."""

    cid: Cid
    body: msgspec.Raw
    to: UserId | None = None
    group: UserId | None = None  # group ids have the user id alphabet


class Recv(msgspec.Struct, tag="recv", tag_field="op", frozen=True):
    """``{"op":"recv","ids":[...]}``: confirms delivery."""

    ids: Annotated[list[ItemId], msgspec.Meta(max_length=MAX_RECV_IDS)]


class Presence(msgspec.Struct, tag="presence", tag_field="op", frozen=True):
    """``{"op":"presence","users":[...]}``: who is online; ``cid``, if given,
    is echoed in the answer."""

    users: Annotated[list[UserId], msgspec.Meta(max_length=MAX_PRESENCE_USERS)]
    cid: Cid | None = None


ClientOp = Send | Recv | Presence

_decode_op = msgspec.json.Decoder(ClientOp).decode


class _CidOnly(msgspec.Struct):
    cid: Any = None


_decode_cid = msgspec.json.Decoder(_CidOnly).decode


def _cid_of(payload: bytes) -> str | None:
    """The cid of a request that failed validation, for the error frame."""
    try:
        cid = _decode_cid(payload).cid
    except (msgspec.DecodeError, RecursionError):
        return None
    return cid if isinstance(cid, str) else None


def decode_client_op(payload: bytes, max_body: int) -> ClientOp:
    """Decode one text message from a client into an op.

    ``payload`` is already known to be UTF-8 (the framing layer checked).
    Raises ``RequestError``: ``bad_request`` for anything that is not a valid
    op (not JSON, not an object, unknown op, a missing or mistyped field), with
    msgspec's description of what is wrong; ``too_large`` for a body over
    ``max_body``; ``bad_request`` also for a send with both or neither of
    ``to`` and ``group``. The caller answers with an error frame and stays open.
    """
    try:
        op = _decode_op(payload)
    except msgspec.ValidationError as exc:
        raise RequestError("bad_request", str(exc), _cid_of(payload)) from None
    except msgspec.DecodeError as exc:
        raise RequestError("bad_request", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("bad_request", "JSON nested too deeply", _cid_of(payload)) from None
    if type(op) is Send:
        if (op.to is None) is (op.group is None):
            raise RequestError(
                "bad_request", 'a send needs exactly one of "to" and "group"', op.cid
            )
        if len(op.body) > max_body:
            raise RequestError(
                "too_large", f"body is {len(op.body)} bytes, the limit is {max_body}", op.cid
            )
    return op


class Ack(msgspec.Struct, tag="ack", tag_field="op"):
    cid: str
    id: str
    ts: int


class Msg(msgspec.Struct, tag="msg", tag_field="op"):
    id: str
    sender: str = msgspec.field(name="from")
    to: str = ""
    ts: int = 0
    body: msgspec.Raw = msgspec.Raw(b"null")


class GroupMsg(msgspec.Struct, tag="msg", tag_field="op"):
    """A ``msg`` sent to a group: a ``Msg`` with the group's id after ``to``."""

    id: str
    sender: str = msgspec.field(name="from")
    to: str = ""
    group: str = ""
    ts: int = 0
    body: msgspec.Raw = msgspec.Raw(b"null")


class Receipt(msgspec.Struct, tag="receipt", tag_field="op"):
    id: str
    ref: str
    by: str
    status: str
    ts: int


class ErrorFrame(msgspec.Struct, tag="error", tag_field="op"):
    cid: str | None
    code: str
    reason: str


encode = msgspec.json.Encoder().encode
"""Encode a server op, or any JSON value, to bytes."""


# The three frames sent for every message, built by formatting instead of
# through a Struct: they are most of the server's output, and this is ~5x
# cheaper. Ids, user ids and timestamps never need JSON escaping (their
# alphabets are fixed, see UserId and store.base.IdGenerator); the cid comes
# from a client and is escaped; the body is the client's own valid JSON.
# tests/proto/test_messages.py checks each against its Struct.


def encode_ack(cid: str, item_id: str, ts: int) -> bytes:
    return b'{"op":"ack","cid":%b,"id":"%b","ts":%d}' % (encode(cid), item_id.encode(), ts)


def encode_msg(item_id: str, sender: str, to: str, ts: int, body: bytes) -> bytes:
    return b'{"op":"msg","id":"%b","from":"%b","to":"%b","ts":%d,"body":%b}' % (
        item_id.encode(),
        sender.encode(),
        to.encode(),
        ts,
        body,
    )


def encode_receipt(item_id: str, ref: str, by: str, ts: int) -> bytes:
    return b'{"op":"receipt","id":"%b","ref":"%b","by":"%b","status":"delivered","ts":%d}' % (
        item_id.encode(),
        ref.encode(),
        by.encode(),
        ts,
    )


def encode_group_msg(item_id: str, sender: str, to: str, group: str, ts: int, body: bytes) -> bytes:
    """``GroupMsg``; a group id has the user id alphabet, so it needs no escaping."""
    return b'{"op":"msg","id":"%b","from":"%b","to":"%b","group":"%b","ts":%d,"body":%b}' % (
        item_id.encode(),
        sender.encode(),
        to.encode(),
        group.encode(),
        ts,
        body,
    )


def encode_presence(users: dict[str, dict[str, Any]], cid: str | None = None) -> bytes:
    """The answer to a ``presence`` request; ``cid`` only when the request had one."""
    if cid is None:
        return encode({"op": "presence", "users": users})
    return encode({"op": "presence", "cid": cid, "users": users})
