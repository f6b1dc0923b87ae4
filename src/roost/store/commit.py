"""Group commit: every op of one event-loop turn goes into one transaction.

Rules:
- At most one batch is in flight, run on the store's own thread, so batches
  commit in the order they were collected and results are handled in that
  order. That order is what makes delivery order equal id order.
- Ops that arrive while a batch is in flight wait for the next one; under load
  batches grow by themselves, and one fsync covers thousands of messages.
- ``on_done(ops, results)`` runs on the event loop once a batch is durable;
  ``results`` is a ``StoreError`` when the batch failed, and then nothing in it
  may be acked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from roost.errors import StoreError
from roost.store.base import InboxStore, Op

log = logging.getLogger("roost.store")

DoneCallback = Callable[[list[Op], "list[Any] | StoreError"], None]


class GroupCommit:
    def __init__(self, store: InboxStore, on_done: DoneCallback) -> None:
        self._store = store
        self._on_done = on_done
        self._pending: list[Op] = []
        self._in_flight = False
        self._kick_scheduled = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roost-store")
        self._loop = asyncio.get_running_loop()
        self.batches = 0  # committed batches, for stats
        self.ops = 0  # committed ops, for stats

    def add(self, op: Op) -> None:
        self._pending.append(op)
        self._idle.clear()
        if not self._kick_scheduled and not self._in_flight:
            # Let the rest of this loop turn add its ops before committing.
            self._kick_scheduled = True
            self._loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._in_flight or not self._pending:
            return
        batch, self._pending = self._pending, []
        self._in_flight = True
        future = self._loop.run_in_executor(self._executor, self._store.apply, batch)
        future.add_done_callback(lambda f: self._done(batch, f))

    def _done(self, batch: list[Op], future: asyncio.Future[list[Any]]) -> None:
        self._in_flight = False
        exc = future.exception()
        try:
            if exc is None:
                self.batches += 1
                self.ops += len(batch)
                self._on_done(batch, future.result())
            else:
                error = (
                    exc if isinstance(exc, StoreError) else StoreError(f"inbox write failed: {exc}")
                )
                self._on_done(batch, error)
        except Exception:
            # The batch is committed; a bug in answering it must not stop
            # every later batch.
            log.exception("handling a committed batch failed")
        if self._pending:
            self._kick()
        else:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every op added so far is committed and handled."""
        while not self._idle.is_set():
            await self._idle.wait()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._store.close()
