"""The messaging layer: what protocol-v1 ops do, on one worker among many.

Rules:
- Every user has one owner worker (workers.routing). The owner alone holds the
  user's live connection and inbox. A connection authenticated elsewhere is
  handed to the owner before the 101 is sent.
- A ``send`` becomes a ``Put`` in the group-commit batch of the recipient's
  owner: locally, or as a ``PUT`` over the link to the owner, which answers
  ``ACKED``/``FAILED`` after its commit. Ack and delivery both wait for the
  commit, so nothing is acked or delivered that a crash could lose.
- A ``recv`` becomes a ``Confirm`` on the owner (the confirming user's
  worker): the items leave the inbox and receipts are stored for the senders
  in the same transaction, or put in the outbox when another worker owns the
  sender, and forwarded until that worker says it has them.
- A new connection is ``LOADING`` until its backlog (a ``Load`` in the batch
  stream) has been sent. Batches are handled strictly in commit order, so an
  item committed before the ``Load`` is in the backlog, and one committed
  after it is delivered live: no item is skipped and none is reordered.
- One live connection per user: a newer one closes the older with 4001.
- A request whose owner cannot be reached (restarting after a crash) fails
  with ``internal`` and was not stored: the client sends it again.
- A send's answer goes back to its origin: a client ``Conn``, a peer worker's
  ref, or a ``Waiter`` (an HTTP request, a group fan-out; see roost.waiter).
- Groups (roost.groups) and presence (roost.presence) keep their own state;
  the hub routes their ops and link messages to them. Requests that are not
  sends go to their owner as ``CALL``/``REPLY`` (``Hub.call``).
- Push (roost.push): an item committed on the owner for a user with no live
  connection goes to the notifier; nothing else of the hot path knows it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from itertools import count
from typing import TYPE_CHECKING, Any

from roost.auth import verify_token
from roost.config import Settings
from roost.engine.loop import Engine
from roost.engine.table import LOADING, OPEN, Conn
from roost.errors import RequestError, StoreError
from roost.groups import Groups
from roost.presence import PresenceBook
from roost.proto.frames import CloseCode
from roost.proto.handshake import Request, json_error
from roost.proto.messages import (
    ErrorFrame,
    Presence,
    Recv,
    Send,
    decode_client_op,
    encode,
    encode_ack,
    encode_group_msg,
    encode_msg,
    encode_presence,
    encode_receipt,
)
from roost.store.base import (
    CALLBACK_OPS,
    INBOX_FULL,
    KIND_GROUP,
    KIND_MSG,
    ClearOutbox,
    Confirm,
    Item,
    Load,
    Op,
    Outbound,
    Put,
    PutReceipt,
)
from roost.store.commit import GroupCommit
from roost.workers import codec
from roost.workers.links import Links
from roost.workers.routing import owner_of

if TYPE_CHECKING:
    from roost.push.webhook import WebhookNotifier

log = logging.getLogger("roost.hub")

OUTBOX_RESEND_AFTER = 5.0  # seconds before an unanswered forwarded receipt is sent again
UNAVAILABLE = "the recipient's worker is restarting; nothing was stored, send again"


def item_frame(item: Item) -> bytes:
    """The JSON payload that delivers an inbox item."""
    if item.kind == KIND_MSG:
        return encode_msg(item.id, item.sender, item.user, item.ts, item.body)
    if item.kind == KIND_GROUP:
        return encode_group_msg(item.id, item.sender, item.user, item.ref or "", item.ts, item.body)
    return encode_receipt(item.id, item.ref or "", item.sender, item.ts)


class Stats:
    """Counters published to shared memory by the worker. Plain ints: cheap to bump."""

    __slots__ = ("acks", "errors", "messages_in", "messages_out", "receipts")

    def __init__(self) -> None:
        self.messages_in = 0  # send ops accepted from this worker's clients
        self.messages_out = 0  # inbox items written to live connections
        self.acks = 0  # acks sent
        self.receipts = 0  # receipts stored
        self.errors = 0  # error frames sent


class Hub:
    def __init__(self, settings: Settings, secret: bytes, index: int = 0, workers: int = 1) -> None:
        self.settings = settings
        self.secret = secret
        self.index = index  # this worker
        self.workers = workers  # how many share the users
        self.online: dict[str, Conn] = {}  # user id -> their one live connection
        self.stats = Stats()
        self.engine: Engine
        self.commit: GroupCommit
        self.links: Links
        self.on_http = _no_http
        self._refs = count(1)
        # ref -> (owner worker, origin, cid): sends awaiting a remote commit;
        # the origin is the sender's Conn or a Waiter (roost.waiter)
        self._remote_puts: dict[int, tuple[int, Any, Any]] = {}
        # oid -> (receipt, when last sent): forwarded receipts awaiting RECEIPT_DONE
        self._outbox: dict[int, tuple[Outbound, float]] = {}
        # ref -> (worker asked, its reply callback): CALLs awaiting a REPLY
        self._calls: dict[int, tuple[int, Callable[[Any], None]]] = {}
        self.groups = Groups(self)
        self.presence = PresenceBook(self)
        self.push: WebhookNotifier | None = None  # set by the worker when a webhook is configured

    def bind(self, engine: Engine, commit: GroupCommit, links: Links) -> None:
        self.engine = engine
        self.commit = commit
        self.links = links

    # ---- connections -----------------------------------------------------

    def owner(self, user: str) -> int:
        return owner_of(user, self.workers) if self.workers > 1 else 0

    def owns(self, user: str) -> bool:
        return self.owner(user) == self.index

    def authenticate(self, request: Request) -> str:
        token = request.query.get("token")
        if token is None:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                token = value.strip()
        return verify_token(self.secret, token)

    def hand_off(self, fd: int, user: str, key: str, leftover: bytes) -> None:
        self.links.send(self.owner(user), (codec.HANDOFF, user, key, leftover), fd)

    def on_open(self, conn: Conn) -> None:
        user = conn.user
        assert user is not None
        older = self.online.get(user)
        if older is not None:
            self.engine.close(older, CloseCode.REPLACED, "replaced by a newer connection")
        self.online[user] = conn
        self.commit.add(Load(user, conn))

    def on_closed(self, conn: Conn) -> None:
        user = conn.user
        if user is not None and self.online.get(user) is conn:
            del self.online[user]
            self.presence.went_offline(user)

    # ---- ops from clients ------------------------------------------------

    def on_text(self, conn: Conn, payload: bytes) -> None:
        limit = self.settings.rate_limit
        if limit:
            second = int(time.monotonic())
            if conn.rate >> 20 != second:
                conn.rate = second << 20
            conn.rate += 1
            if conn.rate & 0xFFFFF > limit:
                self._error(conn, None, "rate_limited", f"more than {limit} frames in a second")
                return
        try:
            op = decode_client_op(payload, self.settings.max_body)
        except RequestError as exc:
            self._error(conn, exc.cid, exc.code, exc.reason)
            return
        user = conn.user or ""
        if type(op) is Send:
            self.stats.messages_in += 1
            if op.to is None:
                self.send_group(conn, op.cid, op.group or "", user, bytes(op.body), True)
                return
            owner = self.owner(op.to)
            if owner == self.index:
                self.commit.add(Put(op.to, user, bytes(op.body), (conn, op.cid)))
            else:
                ref = next(self._refs)
                self._remote_puts[ref] = (owner, conn, op.cid)
                self.links.send(owner, (codec.PUT, ref, op.to, user, bytes(op.body)))
        elif type(op) is Recv and op.ids:
            self.commit.add(Confirm(user, op.ids))
        elif type(op) is Presence:
            self._presence_request(conn, op.users, op.cid)

    def _error(self, conn: Conn, cid: str | None, code: str, reason: str) -> None:
        self.stats.errors += 1
        self.engine.send_text(conn, encode(ErrorFrame(cid, code, reason)))

    def _ack(self, conn: Conn, cid: str, item_id: str, ts: int) -> None:
        self.stats.acks += 1
        self.engine.send_text(conn, encode_ack(cid, item_id, ts))

    def _deliver(self, item: Item) -> None:
        conn = self.online.get(item.user)
        if conn is not None and conn.state == OPEN:
            self.stats.messages_out += 1
            self.engine.send_text(conn, item_frame(item))

    # ---- sends from anywhere: answers, groups, the backend API ----------------

    def answer(self, origin: Any, cid: Any, item_id: str, ts: int) -> None:
        """Ack a send to its origin: a client, a peer worker's ref or a Waiter."""
        kind = type(origin)
        if kind is int:
            self.links.send(origin, (codec.ACKED, cid, item_id, ts))
        elif kind is Conn:
            if origin.fd >= 0:
                self._ack(origin, cid, item_id, ts)
        else:
            origin.acked(item_id, ts)

    def answer_error(self, origin: Any, cid: Any, code: str, reason: str) -> None:
        """Fail a send to its origin, which may send it again."""
        kind = type(origin)
        if kind is int:
            self.links.send(origin, (codec.FAILED, cid, code, reason))
        elif kind is Conn:
            if origin.fd >= 0:
                self._error(origin, cid, code, reason)
        else:
            origin.failed(code, reason)

    def send_remote(self, owner: int, origin: Any, cid: Any, kind: int, *fields: Any) -> None:
        """Send ``(kind, ref, *fields)`` to ``owner``, which answers ``ACKED``
        or ``FAILED`` with the ref; the answer goes to ``origin``."""
        ref = next(self._refs)
        self._remote_puts[ref] = (owner, origin, cid)
        self.links.send(owner, (kind, ref, *fields))

    def send_direct(self, origin: Any, cid: Any, to: str, sender: str, body: bytes) -> None:
        """A 1:1 send that is not a client's own (the backend API's)."""
        self.stats.messages_in += 1
        owner = self.owner(to)
        if owner == self.index:
            self.commit.add(Put(to, sender, body, (origin, cid)))
        else:
            self.send_remote(owner, origin, cid, codec.PUT, to, sender, body)

    def send_group(
        self, origin: Any, cid: Any, gid: str, sender: str, body: bytes, check: bool
    ) -> None:
        """A group send, to the group's owner (roost.groups); with ``check``
        the sender must be a member."""
        owner = self.owner(gid)
        if owner == self.index:
            self.groups.send(origin, cid, gid, sender, body, check)
        else:
            self.send_remote(owner, origin, cid, codec.GSEND, gid, sender, body, check)

    # ---- requests that are not sends -----------------------------------------

    def call(self, worker: int, method: str, args: Any, reply: Callable[[Any], None]) -> None:
        """Ask ``worker`` (maybe this one): ``reply`` gets its answer, or None
        when it cannot be reached (restarting after a crash)."""
        if worker == self.index:
            self._serve_call(method, args, reply)
            return
        ref = next(self._refs)
        self._calls[ref] = (worker, reply)
        self.links.send(worker, (codec.CALL, ref, method, args))

    def _serve_call(self, method: str, args: Any, reply: Callable[[Any], None]) -> None:
        if method == "presence":
            self.presence.local(args, reply)
        elif method == "group":
            action, gid, rest = args
            self.groups.admin(action, gid, rest, reply)
        elif method == "disconnect":
            conn = self.online.get(args)
            if conn is not None:
                self.engine.close(conn, CloseCode.DISCONNECTED, "disconnected by the API")
            reply(conn is not None)
        else:
            log.error("unknown call %r", method)

    def _presence_request(self, conn: Conn, users: list[str], cid: str | None) -> None:
        def reply(answer: dict[str, dict[str, Any]]) -> None:
            self.engine.send_text(conn, encode_presence(answer, cid))

        self.presence.query(users, reply)

    def _on_group_link_message(self, source: int, message: list[Any]) -> None:
        kind = message[0]
        if kind == codec.GSEND:
            _, ref, gid, sender, body, check = message
            self.groups.send(source, ref, gid, sender, body, check)
        elif kind == codec.GPUT:
            _, ref, gid, sender, body, members = message
            self.groups.store(source, ref, gid, sender, body, members)
        elif kind == codec.CALL:
            _, ref, method, args = message
            links = self.links
            self._serve_call(
                method, args, lambda result: links.send(source, (codec.REPLY, ref, result))
            )
        elif kind == codec.REPLY:
            _, ref, result = message
            waiting = self._calls.pop(ref, None)
            if waiting is not None:
                waiting[1](result)

    # ---- ops from other workers --------------------------------------------

    def on_link_message(self, source: int, message: list[Any], fd: int | None) -> None:
        kind = message[0]
        if kind == codec.PUT:
            _, ref, to, sender, body = message
            self.commit.add(Put(to, sender, body, (source, ref)))
        elif kind == codec.ACKED:
            _, ref, item_id, ts = message
            pending = self._remote_puts.pop(ref, None)
            if pending is not None:
                self.answer(pending[1], pending[2], item_id, ts)
        elif kind == codec.FAILED:
            _, ref, code, reason = message
            pending = self._remote_puts.pop(ref, None)
            if pending is not None:
                self.answer_error(pending[1], pending[2], code, reason)
        elif kind == codec.HANDOFF:
            _, user, key, leftover = message
            assert fd is not None
            self.engine.adopt(fd, user, key, leftover)
        elif kind == codec.RECEIPT:
            _, oid, user, by, ref, ts = message
            self.commit.add(PutReceipt(user, by, ref, ts, (source, oid)))
        elif kind == codec.RECEIPT_DONE:
            oids = message[1]
            for oid in oids:
                self._outbox.pop(oid, None)
            self.commit.add(ClearOutbox(oids))
        else:
            self._on_group_link_message(source, message)

    def on_undeliverable(self, peer: int, messages: list[tuple[Any, ...]], fds: list[int]) -> None:
        """Fail what could not reach ``peer``, explicitly and right away."""
        fd_iter = iter(fds)
        for message in messages:
            kind = message[0]
            if kind == codec.PUT or kind == codec.GSEND or kind == codec.GPUT:
                pending = self._remote_puts.pop(message[1], None)
                if pending is not None:
                    self.answer_error(pending[1], pending[2], "internal", UNAVAILABLE)
            elif kind == codec.CALL:
                waiting = self._calls.pop(message[1], None)
                if waiting is not None:
                    waiting[1](None)
            elif kind == codec.HANDOFF:
                fd = next(fd_iter)
                with contextlib.suppress(OSError):
                    os.write(fd, json_error(503, "the user's worker is restarting; retry"))
                os.close(fd)
            # RECEIPTs stay in the outbox and are resent; answers to a worker
            # that died are moot, its clients are gone with it.

    def on_link_down(self, peer: int) -> None:
        """The owner died: the sends it had not answered were not acked; fail them."""
        for ref, (owner, origin, cid) in list(self._remote_puts.items()):
            if owner == peer:
                del self._remote_puts[ref]
                self.answer_error(origin, cid, "internal", UNAVAILABLE)
        for ref, (worker, reply) in list(self._calls.items()):
            if worker == peer:
                del self._calls[ref]
                reply(None)

    def forward_outbox(self, entries: list[Outbound], now: float) -> None:
        for entry in entries:
            self._outbox[entry.oid] = (entry, now)
            self.links.send(
                self.owner(entry.user),
                (codec.RECEIPT, entry.oid, entry.user, entry.by, entry.ref, entry.ts),
            )

    def resend_outbox(self, now: float) -> None:
        """Forward again what has had no RECEIPT_DONE for a while (its owner
        restarted, or the answer was lost with a link)."""
        stale = [e for e, sent in self._outbox.values() if now - sent > OUTBOX_RESEND_AFTER]
        self.forward_outbox(stale, now)

    # ---- commits -----------------------------------------------------------

    def on_committed(self, ops: list[Op], results: list[Any] | StoreError) -> None:
        """Answer and deliver what one batch made durable, in commit order."""
        if isinstance(results, StoreError):
            self._on_failed(ops, results)
            return
        engine = self.engine
        receipts_done: dict[int, list[int]] = {}
        for op, result in zip(ops, results, strict=True):
            if type(op) is Put:
                origin, cid = op.ctx
                if result is INBOX_FULL:
                    reason = f"the inbox of {op.user} is full"
                    if type(origin) is int:
                        self.links.send(origin, (codec.FAILED, cid, "inbox_full", reason))
                    elif type(origin) is Conn:
                        self._error(origin, cid, "inbox_full", reason)
                    else:
                        origin.failed("inbox_full", reason)
                    continue
                if type(origin) is int:
                    self.links.send(origin, (codec.ACKED, cid, result.id, result.ts))
                elif type(origin) is Conn:
                    self._ack(origin, cid, result.id, result.ts)
                else:
                    origin.acked(result.id, result.ts)
                self._deliver(result)
                if self.push is not None and result.user not in self.online:
                    self.push.notify(result)
            elif type(op) is Confirm:
                if self.push is not None:
                    self.push.confirmed(op.user, op.ids)
                receipts, outbound = result
                self.stats.receipts += len(receipts)
                for receipt in receipts:
                    self._deliver(receipt)
                if outbound:
                    self.forward_outbox(outbound, time.monotonic())
            elif type(op) is PutReceipt:
                source, oid = op.ctx
                receipts_done.setdefault(source, []).append(oid)
                if result is not None:
                    self.stats.receipts += 1
                    self._deliver(result)
            elif type(op) is Load:
                conn = op.ctx
                if conn.fd < 0 or conn.state != LOADING:
                    continue  # gone or replaced while its backlog was read
                for item in result:
                    engine.send_text(conn, item_frame(item))
                self.stats.messages_out += len(result)
                conn.state = OPEN
            elif type(op) in CALLBACK_OPS:
                _call_back(op.ctx, result)  # groups and presence
        for source, oids in receipts_done.items():
            self.links.send(source, (codec.RECEIPT_DONE, oids))

    def _on_failed(self, ops: list[Op], error: StoreError) -> None:
        log.error("%s (%d ops not acked)", error, len(ops))
        for op in ops:
            if type(op) is Put:
                origin, cid = op.ctx
                reason = "the message was not stored; send it again"
                self.answer_error(origin, cid, "internal", reason)
            elif type(op) is Load:
                self.engine.close(op.ctx, CloseCode.INTERNAL_ERROR, "inbox unavailable")
            elif type(op) in CALLBACK_OPS:
                _call_back(op.ctx, error)
            # A failed Confirm leaves the items in the inbox: they come again.
            # A failed PutReceipt is not answered: its sender resends it.


def _call_back(callback: Callable[[Any], None], result: Any) -> None:
    """A bug in one group or presence callback must not leave the rest of the
    batch (acks, deliveries) unhandled."""
    try:
        callback(result)
    except Exception:
        log.exception("a store callback failed")


def _no_http(conn: Conn, request: Request) -> bytes | None:
    return json_error(404, "not found")
