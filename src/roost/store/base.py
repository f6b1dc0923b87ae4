"""The inbox interface: what the messaging layer needs from durable storage.

Rules:
- A store applies a *batch* of ops as one atomic transaction and returns one
  result per op, in order. A batch that fails raises ``StoreError`` and leaves
  nothing behind; no op of it may be acked.
- The store assigns item ids, in commit order, so that for one recipient ids
  sort in delivery order (docs/protocol.md). It is the only writer of its
  inboxes: no two processes share one store.
- ``apply`` is synchronous and may block; the caller runs it off the event
  loop (``roost.store.commit.GroupCommit``). A networked store later can keep
  the same shape.
- Ops carry an opaque ``ctx`` the store never reads: the caller's note of who
  to answer when the batch is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

KIND_MSG = 0
KIND_RECEIPT = 1
KIND_GROUP = 2  # a message sent to a group: no receipt when it is confirmed

SYSTEM_SENDER = "system"
"""The sender of messages the backend sends in no user's name (POST /api/send):
their confirmations produce no receipts, which no one would ever read."""


@dataclass(slots=True)
class Item:
    """One inbox item, as stored and as delivered."""

    id: str  # 20 hex chars, see IdGenerator
    user: str  # the recipient, whose inbox holds it
    kind: int  # KIND_MSG, KIND_RECEIPT or KIND_GROUP
    sender: str  # a message's "from"; a receipt's "by"
    ref: str | None  # a receipt's message id; a group message's group id; else None
    ts: int  # unix ms when the item was accepted
    body: bytes  # a message's raw JSON body; b"" for a receipt


class Put(NamedTuple):
    """Store a message for ``user``. Result: the stored ``Item``, or
    ``INBOX_FULL`` when ``user`` already holds the cap."""

    user: str
    sender: str
    body: bytes
    ctx: Any = None
    group: str | None = None  # a group message (KIND_GROUP) sent to this group


class Confirm(NamedTuple):
    """Remove confirmed items from ``user``'s inbox; for each removed message,
    store a receipt for its sender: here if this store owns the sender, else in
    the outbox, to be forwarded to the sender's store. Result: a pair (new
    receipt ``Item``s, new ``Outbound`` receipts)."""

    user: str
    ids: list[str]
    ctx: Any = None


class PutReceipt(NamedTuple):
    """Store a receipt forwarded by another store's outbox. Result: the
    ``Item``, or None when this receipt was stored before (a resend)."""

    user: str
    by: str
    ref: str
    ts: int
    ctx: Any = None


class ClearOutbox(NamedTuple):
    """Forget outbox entries that their destination has stored. Result: None."""

    oids: list[int]
    ctx: Any = None


class Outbound(NamedTuple):
    """A receipt waiting in the outbox for the store that owns ``user``."""

    oid: int
    user: str
    by: str
    ref: str
    ts: int


class Load(NamedTuple):
    """Read ``user``'s unconfirmed items. Result: the ``Item``s in id order."""

    user: str
    ctx: Any = None


class SetGroup(NamedTuple):
    """Create group ``gid`` or replace its members. Result: the members, sorted."""

    gid: str
    members: list[str]
    ctx: Any = None


class EditGroup(NamedTuple):
    """Add members to group ``gid``, then remove members (so one in both ends
    up out). Result: the members, sorted; None when there is no such group;
    ``TOO_MANY`` (and nothing changed) when more than ``limit`` would remain."""

    gid: str
    add: list[str]
    remove: list[str]
    limit: int
    ctx: Any = None


class GetGroup(NamedTuple):
    """Read group ``gid``. Result: its members, sorted, or None."""

    gid: str
    ctx: Any = None


class DeleteGroup(NamedTuple):
    """Delete group ``gid``. Result: whether it existed."""

    gid: str
    ctx: Any = None


class Seen(NamedTuple):
    """Record that ``user`` went offline at ``ts`` (unix ms). Result: None."""

    user: str
    ts: int
    ctx: Any = None


class LastSeen(NamedTuple):
    """Read when each of ``users`` went offline last. Result: a dict user ->
    unix ms, without the users never recorded."""

    users: list[str]
    ctx: Any = None


Op = (
    Put
    | Confirm
    | Load
    | PutReceipt
    | ClearOutbox
    | SetGroup
    | EditGroup
    | GetGroup
    | DeleteGroup
    | Seen
    | LastSeen
)

CALLBACK_OPS = (SetGroup, EditGroup, GetGroup, DeleteGroup, LastSeen)
"""Ops whose ``ctx`` is a callable, called with the result (or the
``StoreError`` of a failed batch) once the batch is handled."""

INBOX_FULL = "inbox_full"
TOO_MANY = "too_many"


class InboxStore(Protocol):
    """What the SQLite store (and any later store) implements."""

    def apply(self, ops: list[Op]) -> list[Any]:
        """Apply ``ops`` atomically; one result per op. Raises StoreError."""
        ...

    def outbox(self) -> list[Outbound]:
        """Every receipt not yet stored by its destination, oldest first."""
        ...

    def close(self) -> None: ...


class IdGenerator:
    """Item ids: unix ms (12 hex), a sequence within the ms (5 hex) and the
    store's shard (3 hex). Fixed width, so string order is numeric order.

    Never goes backwards: if the clock does, ids continue from the last one,
    and a restarted store resumes above the largest id it holds.
    """

    __slots__ = ("_last_ms", "_seq", "_suffix")

    def __init__(self, shard: int = 0, last_id: str | None = None) -> None:
        if not 0 <= shard < 0x1000:
            raise ValueError("shard must be in 0..4095")
        self._suffix = f"{shard:03x}"
        self._last_ms = -1
        self._seq = 0
        if last_id:
            self._last_ms = int(last_id[:12], 16)
            self._seq = int(last_id[12:17], 16)

    def next(self, now_ms: int) -> str:
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._seq = 0
        else:
            self._seq += 1
            if self._seq > 0xFFFFF:
                self._last_ms += 1
                self._seq = 0
        return f"{self._last_ms:012x}{self._seq:05x}{self._suffix}"
