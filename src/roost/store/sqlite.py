"""Inboxes in one SQLite file (WAL), one writer.

Rules:
- One batch is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): group
  commit. With ``fsync="full"`` the commit is on disk before ``apply``
  returns (power-loss safe); with ``"normal"`` it is in the WAL in the OS page
  cache, which survives a ``kill -9`` of roost but not a power cut.
- A receipt bypasses the inbox cap: it answers a message its recipient sent,
  and dropping it would lose an acked fact. It is bounded by what they sent.
- Ids are generated here, in commit order (see base.IdGenerator).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from roost.errors import StoreError
from roost.store.base import (
    INBOX_FULL,
    KIND_MSG,
    KIND_RECEIPT,
    Confirm,
    IdGenerator,
    Item,
    Load,
    Op,
    Put,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    user   TEXT    NOT NULL,
    id     TEXT    NOT NULL,
    kind   INTEGER NOT NULL,
    sender TEXT    NOT NULL,
    ref    TEXT,
    ts     INTEGER NOT NULL,
    body   BLOB    NOT NULL,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
"""

_COUNT_CACHE_MAX = 100_000  # users whose inbox size is remembered between batches


class SQLiteInboxStore:
    """The embedded store: ``<data_dir>/inbox-<shard>.db``."""

    def __init__(
        self, path: Path, *, inbox_cap: int = 10_000, fsync: str = "full", shard: int = 0
    ) -> None:
        if fsync not in ("full", "normal"):
            raise ValueError("fsync must be 'full' or 'normal'")
        path.parent.mkdir(parents=True, exist_ok=True)
        # The store is used from one writer thread, but opened on the caller's.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={fsync.upper()}")
        self._db.executescript(_SCHEMA)
        last = self._db.execute("SELECT MAX(id) FROM inbox").fetchone()[0]
        self._ids = IdGenerator(shard, last)
        self._cap = inbox_cap
        # user -> number of items in their inbox, so the cap costs no COUNT(*)
        # per message; filled lazily, dropped wholesale when it grows too big.
        self._counts: dict[str, int] = {}

    def apply(self, ops: list[Op]) -> list[Any]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            results = [self._apply_one(op) for op in ops]
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._counts.clear()  # it counted writes that were rolled back
            raise StoreError(f"inbox write failed: {exc}") from exc
        if len(self._counts) > _COUNT_CACHE_MAX:
            self._counts.clear()
        return results

    def _apply_one(self, op: Op) -> Any:
        if type(op) is Put:
            if self._count(op.user) >= self._cap:
                return INBOX_FULL
            return self._insert(op.user, KIND_MSG, op.sender, None, op.body)
        if type(op) is Confirm:
            return self._confirm(op.user, op.ids)
        assert type(op) is Load
        rows = self._db.execute(
            "SELECT id, kind, sender, ref, ts, body FROM inbox WHERE user = ? ORDER BY id",
            (op.user,),
        ).fetchall()
        self._counts[op.user] = len(rows)
        return [Item(r[0], op.user, r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def _count(self, user: str) -> int:
        n = self._counts.get(user)
        if n is None:
            n = self._db.execute("SELECT COUNT(*) FROM inbox WHERE user = ?", (user,)).fetchone()[0]
            self._counts[user] = n
        return n

    def _insert(self, user: str, kind: int, sender: str, ref: str | None, body: bytes) -> Item:
        ts = time.time_ns() // 1_000_000
        item = Item(self._ids.next(ts), user, kind, sender, ref, ts, body)
        self._db.execute(
            "INSERT INTO inbox (user, id, kind, sender, ref, ts, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user, item.id, kind, sender, ref, ts, body),
        )
        self._counts[user] = self._count(user) + 1
        return item

    def _confirm(self, user: str, ids: list[str]) -> list[Item]:
        receipts = []
        for item_id in ids:
            row = self._db.execute(
                "DELETE FROM inbox WHERE user = ? AND id = ? RETURNING kind, sender",
                (user, item_id),
            ).fetchone()
            if row is None:
                continue  # already confirmed: recv is idempotent
            if user in self._counts:
                self._counts[user] -= 1
            kind, sender = row
            if kind == KIND_MSG:
                receipts.append(self._insert(sender, KIND_RECEIPT, user, item_id, b""))
        return receipts

    def close(self) -> None:
        self._db.close()
