"""A small asyncio client for roost's wire protocol v1 (docs/protocol.md).

It exists so that tests, examples and users' own scripts speak the protocol the
same way, instead of each hand-rolling JSON frames and ack bookkeeping::

    async with roost.client.connect("ws://127.0.0.1:8080/ws", token) as c:
        ack = await c.send("bob", {"text": "hi"})
        async for item in c:
            if isinstance(item, Message):
                print(item.sender, item.body)
            await c.confirm([item.id])

One background task reads the socket. Acks and errors that carry the ``cid`` of
a pending :meth:`Client.send` resolve that call; messages and receipts queue up
for ``async for`` / :meth:`Client.recv_item`. That split lets a caller await a
send while items keep arriving, which a single ``recv()`` loop cannot do.

Built on the ``websockets`` library: the client side has no per-connection
memory budget, unlike the server, so a well-kept library beats hand-written
framing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = [
    "Ack",
    "Client",
    "ClientError",
    "Disconnected",
    "HandshakeFailed",
    "Item",
    "Message",
    "Receipt",
    "ServerError",
    "connect",
]

MAX_IDS_PER_RECV = 1000
"""The server accepts at most this many ids in one ``recv`` frame."""


@dataclass(frozen=True, slots=True)
class Ack:
    """The server committed a sent message to the recipient's durable inbox."""

    cid: str
    id: str
    ts: int


@dataclass(frozen=True, slots=True)
class Message:
    """A ``msg`` frame. ``from`` is a Python keyword, hence ``sender``."""

    id: str
    sender: str
    to: str
    ts: int
    body: Any
    group: str | None = None  # the group it was sent to; None for a 1:1 message


@dataclass(frozen=True, slots=True)
class Receipt:
    """A ``receipt`` frame: ``by`` confirmed the message ``ref`` that we sent."""

    id: str
    ref: str
    by: str
    status: str
    ts: int


Item: TypeAlias = Message | Receipt
"""An inbox item: both kinds must be confirmed with :meth:`Client.confirm`."""


class ClientError(Exception):
    """Root of the exceptions this module raises."""


class HandshakeFailed(ClientError):
    """The server refused the upgrade with an HTTP error (401 for a bad token, ...).

    ``error`` is the ``error`` field of the JSON body, or the raw body text when
    it is not the JSON object the protocol promises.
    """

    def __init__(self, status: int, error: str) -> None:
        super().__init__(f"HTTP {status}: {error}")
        self.status = status
        self.error = error


class ServerError(ClientError):
    """An ``error`` frame. The connection stays open after one."""

    def __init__(self, code: str, reason: str, cid: str | None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.cid = cid


class Disconnected(ClientError):
    """The connection closed; ``code`` is the close code (e.g. 4001 when replaced)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class _Closed:
    """Queue sentinel: the reader ended, no more items will come."""


_CLOSED = _Closed()


class Client:
    """One authenticated connection. Create it with :func:`connect`."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._pending: dict[str, asyncio.Future[Ack]] = {}
        self._presence: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._items: asyncio.Queue[Item | _Closed] = asyncio.Queue()
        # Generated cids: a random prefix keeps them unique across reconnects of
        # the same user, so a late ack can never be mistaken for another send's.
        self._cids = (f"{secrets.token_hex(4)}-{n}" for n in itertools.count(1))
        self._failure: ClientError | None = None
        self.errors: list[ServerError] = []
        """Error frames that matched no pending send (e.g. ``cid`` was null)."""
        self._reader = asyncio.create_task(self._read(), name="roost-client-reader")

    # -- sending ---------------------------------------------------------------

    async def send(
        self, to: str, body: Any, cid: str | None = None, *, timeout: float | None = 30.0
    ) -> Ack:
        """Send ``body`` to user ``to`` and wait until the server acks it.

        The ack means the message is durable, so a caller that got one never has
        to resend. Raises :class:`ServerError` for an error frame with our cid,
        :class:`Disconnected` if the connection closes first, and
        ``TimeoutError`` after ``timeout`` seconds (an error whose cid the
        server could not read arrives with ``cid: null`` and lands in
        :attr:`errors` instead).
        """
        return await self._send({"op": "send", "to": to}, body, cid, timeout)

    async def send_group(
        self, group: str, body: Any, cid: str | None = None, *, timeout: float | None = 30.0
    ) -> Ack:
        """Send ``body`` to every member of ``group`` but us; the ack means it
        is durable for all of them. Raises as :meth:`send` does (``forbidden``
        when we are not a member)."""
        return await self._send({"op": "send", "group": group}, body, cid, timeout)

    async def presence(self, users: Iterable[str], *, timeout: float | None = 30.0) -> Any:
        """``{user: {"online": bool, "last_seen": ms or None}}`` for up to 256 users."""
        cid = next(self._cids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._presence[cid] = fut
        try:
            await self._send_frame({"op": "presence", "users": list(users), "cid": cid})
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._presence.pop(cid, None)

    async def _send(
        self, frame: dict[str, Any], body: Any, cid: str | None, timeout: float | None
    ) -> Ack:
        if cid is None:
            cid = next(self._cids)
        if cid in self._pending:
            raise ValueError(f"cid {cid!r} is already waiting for an ack")
        if self._failure is not None or self.close_code is not None:
            raise self._closed_error()
        fut: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            await self._send_frame({**frame, "cid": cid, "body": body})
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(cid, None)

    async def confirm(self, ids: str | Iterable[str]) -> None:
        """Confirm delivery of inbox items (``recv``); the server answers nothing.

        Unconfirmed items are delivered again on the next connection, so confirm
        once an item is safely handled. Long lists are split into frames of at
        most 1,000 ids, the server's limit.
        """
        id_list = [ids] if isinstance(ids, str) else list(ids)
        for start in range(0, len(id_list), MAX_IDS_PER_RECV):
            chunk = id_list[start : start + MAX_IDS_PER_RECV]
            await self._send_frame({"op": "recv", "ids": chunk})

    async def send_frame(self, frame: dict[str, Any] | str) -> None:
        """Send a raw frame (a dict is JSON-encoded): for tests of bad input."""
        await self._send_frame(frame)

    async def _send_frame(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame, separators=(",", ":"))
        try:
            await self._ws.send(text)
        except ConnectionClosed:
            raise self._closed_error() from None

    # -- receiving -------------------------------------------------------------

    async def recv_item(self, timeout: float | None = 10.0) -> Item:
        """The next message or receipt.

        Raises ``TimeoutError`` if none arrives within ``timeout`` seconds and
        :class:`Disconnected` once the connection closed and every item that
        arrived before was taken.
        """
        async with asyncio.timeout(timeout):
            item = await self._items.get()
        if isinstance(item, _Closed):
            self._items.put_nowait(item)  # every later call must see it too
            raise self._closed_error()
        return item

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        """Iteration ends quietly when the connection closes; see :attr:`close_code`."""
        try:
            return await self.recv_item(timeout=None)
        except Disconnected:
            raise StopAsyncIteration from None

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                self._dispatch(json.loads(raw))
        except ConnectionClosed:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            # The server broke the protocol; better to stop loudly than to
            # guess what it meant.
            self._failure = ClientError(f"malformed frame from server: {exc!r}")
            await self._ws.close(1002, "malformed frame")
        finally:
            failure = self._closed_error()
            waiting: list[asyncio.Future[Any]] = [*self._pending.values()]
            waiting += self._presence.values()
            for fut in waiting:
                if not fut.done():
                    fut.set_exception(failure)
            self._items.put_nowait(_CLOSED)

    def _dispatch(self, frame: dict[str, Any]) -> None:
        op = frame["op"]
        if op == "msg":
            self._items.put_nowait(
                Message(
                    frame["id"],
                    frame["from"],
                    frame["to"],
                    frame["ts"],
                    frame["body"],
                    frame.get("group"),
                )
            )
        elif op == "receipt":
            self._items.put_nowait(
                Receipt(frame["id"], frame["ref"], frame["by"], frame["status"], frame["ts"])
            )
        elif op == "ack":
            fut = self._pending.get(frame["cid"])
            if fut is not None and not fut.done():
                fut.set_result(Ack(frame["cid"], frame["id"], frame["ts"]))
        elif op == "presence":
            waiting = self._presence.get(frame.get("cid", ""))
            if waiting is not None and not waiting.done():
                waiting.set_result(frame["users"])
        elif op == "error":
            error = ServerError(frame["code"], frame["reason"], frame.get("cid"))
            fut = self._pending.get(error.cid) if error.cid is not None else None
            presence = self._presence.get(error.cid) if error.cid is not None else None
            if fut is not None and not fut.done():
                fut.set_exception(error)
            elif presence is not None and not presence.done():
                presence.set_exception(error)
            else:
                self.errors.append(error)
        # Unknown ops are ignored: later protocol versions may add server ops,
        # and an old client should keep working through them.

    # -- closing ---------------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        """The close code once the connection closed (1000, 4001, ...), else None."""
        return self._ws.close_code

    @property
    def close_reason(self) -> str | None:
        """The close reason once the connection closed, else None."""
        return self._ws.close_reason

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (the server echoes 1000) and stop the reader."""
        await self._ws.close(code, reason)
        await self._reader

    async def wait_closed(self) -> None:
        """Wait until the server closes the connection (e.g. after 4001)."""
        await self._ws.wait_closed()
        await self._reader

    def _closed_error(self) -> ClientError:
        """Why the connection is unusable: a malformed server frame, or the close."""
        return self._failure or Disconnected(self.close_code, self.close_reason or "")


def _with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), ("token", token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _handshake_failed(exc: InvalidStatus) -> HandshakeFailed:
    response = exc.response
    body = response.body or b""
    try:
        decoded = json.loads(body)
        error = decoded["error"] if isinstance(decoded, dict) else body.decode()
    except (ValueError, KeyError):
        error = body.decode(errors="replace")
    return HandshakeFailed(response.status_code, str(error))


@contextlib.asynccontextmanager
async def connect(
    url: str,
    token: str,
    *,
    bearer: bool = False,
    open_timeout: float | None = 10.0,
    ping_interval: float | None = 20.0,
) -> AsyncIterator[Client]:
    """Connect to ``url`` (``ws://host:port/ws``) as the user the token names.

    The token travels as ``?token=`` like a browser's would, or with
    ``bearer=True`` in an ``Authorization: Bearer`` header, which keeps it out
    of access logs. A refused upgrade raises :class:`HandshakeFailed`.

    Compression is off because roost never negotiates it (docs/protocol.md),
    and proxies from the environment are ignored: a roost server is usually
    reached directly, and a stray ``HTTP_PROXY`` would break local tests.
    """
    if bearer:
        target, headers = url, {"Authorization": f"Bearer {token}"}
    else:
        target, headers = _with_token(url, token), {}
    try:
        ws = await ws_connect(
            target,
            additional_headers=headers,
            compression=None,
            proxy=None,
            open_timeout=open_timeout,
            ping_interval=ping_interval,
        )
    except InvalidStatus as exc:
        raise _handshake_failed(exc) from exc
    client = Client(ws)
    try:
        yield client
    finally:
        await client.close()
