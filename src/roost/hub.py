"""The messaging layer: what protocol-v1 ops do.

Rules:
- A ``send`` becomes a ``Put`` in the current group-commit batch. Its ack and
  its delivery both wait for the commit, so nothing is acked or delivered that
  a crash could lose, and a delivered id is always a stored id.
- A ``recv`` becomes a ``Confirm``: the items leave the inbox and receipts are
  stored for the senders, in the same transaction.
- A new connection is ``LOADING`` until its backlog (a ``Load`` in the batch
  stream) has been sent. Batches are handled strictly in commit order, so an
  item committed before the ``Load`` is in the backlog, and one committed
  after it is delivered live: no item is skipped and none is reordered.
- One live connection per user: a newer one closes the older with 4001.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import msgspec

from roost import __version__
from roost.auth import is_user_id, issue_token, verify_token
from roost.config import Settings
from roost.engine.loop import Engine
from roost.engine.table import LOADING, OPEN, Conn
from roost.errors import RequestError, StoreError
from roost.proto.frames import CloseCode
from roost.proto.handshake import Request, http_response, json_error
from roost.proto.messages import Ack, ErrorFrame, Msg, Receipt, Recv, Send, decode_client_op, encode
from roost.store.base import INBOX_FULL, KIND_MSG, Confirm, Item, Load, Op, Put
from roost.store.commit import GroupCommit

log = logging.getLogger("roost.hub")

DEMO_TOKEN_TTL = 24 * 3600  # seconds a demo-page token lives


def item_frame(item: Item) -> bytes:
    """The JSON payload that delivers an inbox item."""
    if item.kind == KIND_MSG:
        return encode(Msg(item.id, item.sender, item.user, item.ts, msgspec.Raw(item.body)))
    return encode(Receipt(item.id, item.ref or "", item.sender, "delivered", item.ts))


class Stats:
    """Counters for /healthz and, later, /metrics. Plain ints: cheap to bump."""

    __slots__ = ("acks", "delivered", "errors", "messages_in", "receipts")

    def __init__(self) -> None:
        self.messages_in = 0  # send ops accepted for commit
        self.acks = 0  # acks sent
        self.delivered = 0  # inbox items written to a live connection
        self.receipts = 0  # receipts stored
        self.errors = 0  # error frames sent

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Hub:
    def __init__(self, settings: Settings, secret: bytes) -> None:
        self.settings = settings
        self.secret = secret
        self.online: dict[str, Conn] = {}  # user id -> their one live connection
        self.stats = Stats()
        self.engine: Engine
        self.commit: GroupCommit
        self._routes: dict[str, Callable[[Request], bytes]] = {"/healthz": self._healthz}
        self._demo_page = b""
        if settings.demo:
            self._demo_page = resources.files("roost.demo").joinpath("index.html").read_bytes()
            self._routes["/"] = self._demo_page_route
            self._routes["/demo/token"] = self._demo_token

    def bind(self, engine: Engine, commit: GroupCommit) -> None:
        self.engine = engine
        self.commit = commit

    # ---- connections -----------------------------------------------------

    def authenticate(self, request: Request) -> str:
        token = request.query.get("token")
        if token is None:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                token = value.strip()
        return verify_token(self.secret, token)

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

    # ---- ops ---------------------------------------------------------------

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
        if type(op) is Send:
            self.stats.messages_in += 1
            self.commit.add(Put(op.to, conn.user or "", bytes(op.body), (conn, op.cid)))
        elif type(op) is Recv and op.ids:
            self.commit.add(Confirm(conn.user or "", op.ids))

    def _error(self, conn: Conn, cid: str | None, code: str, reason: str) -> None:
        self.stats.errors += 1
        self.engine.send_text(conn, encode(ErrorFrame(cid, code, reason)))

    def _deliver(self, item: Item) -> None:
        conn = self.online.get(item.user)
        if conn is not None and conn.state == OPEN:
            self.stats.delivered += 1
            self.engine.send_text(conn, item_frame(item))

    def on_committed(self, ops: list[Op], results: list[Any] | StoreError) -> None:
        """Answer and deliver what one batch made durable, in commit order."""
        if isinstance(results, StoreError):
            self._on_failed(ops, results)
            return
        engine = self.engine
        for op, result in zip(ops, results, strict=True):
            kind = type(op)
            if kind is Put:
                conn, cid = op.ctx
                if result is INBOX_FULL:
                    self._error(conn, cid, "inbox_full", f"the inbox of {op.user} is full")
                    continue
                self.stats.acks += 1
                engine.send_text(conn, encode(Ack(cid, result.id, result.ts)))
                self._deliver(result)
            elif kind is Confirm:
                self.stats.receipts += len(result)
                for receipt in result:
                    self._deliver(receipt)
            else:
                conn = op.ctx
                if conn.fd < 0 or conn.state != LOADING:
                    continue  # gone or replaced while its backlog was read
                for item in result:
                    engine.send_text(conn, item_frame(item))
                self.stats.delivered += len(result)
                conn.state = OPEN

    def _on_failed(self, ops: list[Op], error: StoreError) -> None:
        log.error("%s (%d ops not acked)", error, len(ops))
        for op in ops:
            if type(op) is Put:
                conn, cid = op.ctx
                self._error(conn, cid, "internal", "the message was not stored; send it again")
            elif type(op) is Load:
                self.engine.close(op.ctx, CloseCode.INTERNAL_ERROR, "inbox unavailable")
            # A failed Confirm leaves the items in the inbox: they come again.

    # ---- plain HTTP ----------------------------------------------------------

    def on_http(self, conn: Conn, request: Request) -> bytes | None:
        route = self._routes.get(request.path)
        if route is None:
            return json_error(404, "not found")
        if request.method != "GET":
            return json_error(405, "method not allowed", (("Allow", "GET"),))
        return route(request)

    def _healthz(self, request: Request) -> bytes:
        body = {"status": "ok", "version": __version__, "connections": len(self.online)}
        return http_response(200, encode(body))

    def _demo_page_route(self, request: Request) -> bytes:
        return http_response(200, self._demo_page, "text/html; charset=utf-8")

    def _demo_token(self, request: Request) -> bytes:
        user = request.query.get("user", "")
        if not is_user_id(user):
            return json_error(400, "user must be 1-64 characters from [A-Za-z0-9._@-]")
        token = issue_token(self.secret, user, DEMO_TOKEN_TTL)
        return http_response(200, encode({"token": token, "user": user}))
