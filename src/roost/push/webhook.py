"""The push webhook: tell the app's push gateway about items stored for offline users.

Rules:
- The hub calls ``notify`` from its commit handler, on the recipient's owner
  worker, for a message committed while its recipient had no live
  connection; ``confirmed`` for every confirm. Both only touch dicts: the
  hot path never waits for the webhook, and a message is in the inbox
  whatever happens to its notification.
- Batched per user: a user's first item opens a window of ``push_window``
  seconds; what arrives for them in it goes out as one POST.
- Checked when it leaves (every attempt): a user who is online by then gets
  nothing (their connection delivers the items), and items confirmed by then
  are left out. What remains is posted as ``{"user", "items": [...]}``,
  signed ``X-Roost-Signature: sha256=<hex HMAC-SHA256 of the body>``.
- A 5xx, 429, timeout or connection error is retried after ``push_backoff``
  seconds, doubling (with jitter) up to ``push_retries`` retries; then, or at
  once for another 4xx, the notification is dropped with a log line and
  ``push_dropped``. So is anything beyond ``MAX_USERS`` users waiting.
- No task per message or per user: one flusher task and
  ``push_concurrency`` sender tasks per worker, sharing one pooled
  ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from roost import __version__
from roost.config import Settings
from roost.store.base import KIND_GROUP, KIND_MSG, Item

log = logging.getLogger("roost.push")

PREVIEW_CHARS = 100  # characters of a body's "text" in an item's preview
MAX_USERS = 100_000  # users with a notification waiting or in flight, per worker
MAX_BACKOFF = 60.0  # seconds: the longest wait between two attempts
LOG_EVERY = 10.0  # seconds between two log lines about drops


class _Text(msgspec.Struct):
    text: Any = None


_decode_text = msgspec.json.Decoder(_Text).decode
_encode = msgspec.json.Encoder().encode


def preview(body: bytes) -> str | None:
    """The first 100 characters of the body's ``"text"``, when the body is an
    object with a string ``"text"``; else None."""
    try:
        text = _decode_text(body).text
    except (msgspec.DecodeError, RecursionError):
        return None  # not an object
    return text[:PREVIEW_CHARS] if isinstance(text, str) else None


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Roost-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def payload(user: str, items: list[Item]) -> bytes:
    """The webhook's JSON body (docs/push.md)."""
    return _encode(
        {
            "user": user,
            "items": [
                {
                    "id": item.id,
                    "from": item.sender,
                    "group": item.ref if item.kind == KIND_GROUP else None,
                    "ts": item.ts,
                    "preview": preview(item.body),
                }
                for item in items
            ],
        }
    )


class WebhookNotifier:
    def __init__(self, settings: Settings, secret: bytes, is_online: Callable[[str], bool]):
        assert settings.push_webhook is not None
        self.url = settings.push_webhook
        self.secret = secret
        self.window = settings.push_window
        self.retries = settings.push_retries
        self.backoff = settings.push_backoff
        self.timeout = settings.push_timeout
        self.concurrency = settings.push_concurrency
        self.is_online = is_online
        # user -> {item id: item}: collecting, until the user's window closes
        self._collecting: dict[str, dict[str, Item]] = {}
        self._due: deque[tuple[float, str]] = deque()  # (window closes, user), in order
        # user -> {item id: item}: being posted (or waiting to be retried)
        self._sending: dict[str, dict[str, Item]] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._last_log = 0.0
        self._unlogged = 0  # drops since the last log line
        self.sent = 0  # notifications the gateway accepted (2xx)
        self.failed = 0  # attempts that failed (each retry counts)
        self.dropped = 0  # notifications given up

    def start(self) -> None:
        limits = httpx.Limits(
            max_connections=self.concurrency, max_keepalive_connections=self.concurrency
        )
        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            limits=limits,
            headers={"User-Agent": f"roost/{__version__}", "Content-Type": "application/json"},
            trust_env=False,  # the gateway is the app's own: no proxy from the environment
        )
        self._tasks.append(asyncio.create_task(self._flusher()))
        self._tasks.extend(asyncio.create_task(self._sender()) for _ in range(self.concurrency))

    async def close(self) -> None:
        """Stop; what has not gone out is dropped (the items stay in the inboxes)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()

    # ---- called by the hub, on the hot path -----------------------------------

    def notify(self, item: Item) -> None:
        """``item`` was committed for a user with no live connection."""
        if item.kind != KIND_MSG and item.kind != KIND_GROUP:
            return  # receipts are not worth a notification
        user = item.user
        items = self._collecting.get(user)
        if items is None:
            if len(self._collecting) + len(self._sending) >= MAX_USERS:
                self._drop(user, "too many users waiting")
                return
            items = self._collecting[user] = {}
            self._due.append((time.monotonic() + self.window, user))
            self._wake.set()
        items[item.id] = item

    def confirmed(self, user: str, ids: list[str]) -> None:
        """``ids`` left ``user``'s inbox: never notify about them."""
        for table in (self._collecting, self._sending):
            items = table.get(user)
            if items:
                for item_id in ids:
                    items.pop(item_id, None)

    # ---- tasks ---------------------------------------------------------------

    async def _flusher(self) -> None:
        """Close windows as they come due, handing their users to the senders."""
        due = self._due
        while True:
            if not due:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = due[0][0] - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            _, user = due.popleft()
            items = self._collecting.pop(user, None)
            if items is None:
                continue
            sending = self._sending.get(user)
            if sending is not None:
                sending.update(items)  # its sender takes them on its next attempt
            else:
                self._sending[user] = items
                self._ready.put_nowait(user)

    async def _sender(self) -> None:
        while True:
            user = await self._ready.get()
            try:
                await self._deliver(user)
            except Exception:
                log.exception("push for %s failed", user)
                self._sending.pop(user, None)

    async def _deliver(self, user: str) -> None:
        assert self._client is not None
        retries = 0
        while True:
            items = self._sending.get(user)
            if not items or self.is_online(user):
                self._sending.pop(user, None)
                return
            batch = list(items.values())
            body = payload(user, batch)
            headers = {"X-Roost-Signature": sign(self.secret, body)}
            try:
                response = await self._client.post(self.url, content=body, headers=headers)
                status = response.status_code
                problem = f"status {status}"
            except httpx.HTTPError as exc:  # timeouts, refused or reset connections
                status = 0
                problem = type(exc).__name__
            if 200 <= status < 300:
                self.sent += 1
                for item in batch:
                    items.pop(item.id, None)
                if not items:  # else: more came while it was in flight; post them too
                    self._sending.pop(user, None)
                    return
                retries = 0
                continue
            self.failed += 1
            if (0 < status < 500 and status != 429) or retries >= self.retries:
                self._sending.pop(user, None)
                self._drop(user, problem)
                return
            delay = min(MAX_BACKOFF, self.backoff * 2**retries)
            retries += 1
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    def _drop(self, user: str, problem: str) -> None:
        self.dropped += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            log.warning(
                "push for %s dropped (%s); %d dropped since the last report, %d in all",
                user,
                problem,
                self._unlogged,
                self.dropped,
            )
            self._last_log = now
            self._unlogged = 0
