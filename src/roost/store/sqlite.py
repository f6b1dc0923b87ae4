"""Inboxes in one SQLite file (WAL), one writer.

Rules:
- One batch is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): group
  commit. With ``fsync="full"`` the commit is on disk before ``apply``
  returns (power-loss safe); with ``"normal"`` it is in the WAL in the OS page
  cache, which survives a ``kill -9`` of roost but not a power cut.
- A receipt bypasses the inbox cap: it answers a message its recipient sent,
  and dropping it would lose an acked fact. It is bounded by what they sent.
- Ids are generated here, in commit order (see base.IdGenerator).
- A receipt for a sender this store does not own goes to the ``outbox`` table
  in the same transaction as the confirm, and stays there until the owner's
  store says it has it (``ClearOutbox``): a crash between the two loses
  nothing, and a resend is deduplicated by the ``seen_receipts`` table.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roost.errors import StoreError
from roost.store.base import (
    INBOX_FULL,
    KIND_MSG,
    KIND_RECEIPT,
    ClearOutbox,
    Confirm,
    IdGenerator,
    Item,
    Load,
    Op,
    Outbound,
    Put,
    PutReceipt,
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
-- A forwarded receipt may arrive twice (its sender's store resends what it
-- has no answer for, even after the first copy was confirmed); the second is
-- ignored. Rows older than SEEN_RECEIPTS_KEEP_MS are pruned.
CREATE TABLE IF NOT EXISTS seen_receipts (
    user TEXT    NOT NULL,
    ref  TEXT    NOT NULL,
    ts   INTEGER NOT NULL,
    PRIMARY KEY (user, ref)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    oid  INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT    NOT NULL,
    by   TEXT    NOT NULL,
    ref  TEXT    NOT NULL,
    ts   INTEGER NOT NULL
);
"""

SEEN_RECEIPTS_KEEP_MS = 7 * 86_400_000  # far longer than any resend can lag
PRUNE_INTERVAL = 3600.0  # seconds between prunes of seen_receipts (a table scan)
_COUNT_CACHE_MAX = 100_000  # users whose inbox size is remembered between batches


class SQLiteInboxStore:
    """The embedded store: ``<data_dir>/inbox-<shard>.db``."""

    def __init__(
        self,
        path: Path,
        *,
        inbox_cap: int = 10_000,
        fsync: str = "full",
        shard: int = 0,
        is_local: Callable[[str], bool] = lambda user: True,
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
        self._is_local = is_local
        self._pruned = float("-inf")  # monotonic time of the last seen_receipts prune
        self.items = self._db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]

    def apply(self, ops: list[Op]) -> list[Any]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            results = [self._apply_one(op) for op in ops]
            db.execute("COMMIT")
        except Exception as exc:
            # Whatever broke (SQLite, the disk, a bug), nothing of the batch
            # may stay behind half-applied, and nothing of it is acked.
            self._counts.clear()  # it counted writes that are rolled back
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self.items = db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]
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
        if type(op) is PutReceipt:
            return self._put_receipt(op)
        if type(op) is ClearOutbox:
            self._db.executemany("DELETE FROM outbox WHERE oid = ?", [(o,) for o in op.oids])
            return None
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

    def _insert(
        self,
        user: str,
        kind: int,
        sender: str,
        ref: str | None,
        body: bytes,
        ts: int | None = None,
    ) -> Item:
        count = self._count(user)  # before the insert, which COUNT(*) would see
        now = time.time_ns() // 1_000_000
        item = Item(self._ids.next(now), user, kind, sender, ref, now if ts is None else ts, body)
        self._db.execute(
            "INSERT INTO inbox (user, id, kind, sender, ref, ts, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (user, item.id, kind, sender, ref, item.ts, body),
        )
        self._counts[user] = count + 1
        self.items += 1
        return item

    def _put_receipt(self, op: PutReceipt) -> Item | None:
        now = time.monotonic()
        if now - self._pruned > PRUNE_INTERVAL:
            self._pruned = now
            cutoff = time.time_ns() // 1_000_000 - SEEN_RECEIPTS_KEEP_MS
            self._db.execute("DELETE FROM seen_receipts WHERE ts < ?", (cutoff,))
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO seen_receipts (user, ref, ts) VALUES (?, ?, ?)",
            (op.user, op.ref, op.ts),
        )
        if cursor.rowcount == 0:
            return None  # a resend of one stored before
        return self._insert(op.user, KIND_RECEIPT, op.by, op.ref, b"", op.ts)

    def _confirm(self, user: str, ids: list[str]) -> tuple[list[Item], list[Outbound]]:
        receipts: list[Item] = []
        outbound: list[Outbound] = []
        for item_id in ids:
            row = self._db.execute(
                "DELETE FROM inbox WHERE user = ? AND id = ? RETURNING kind, sender",
                (user, item_id),
            ).fetchone()
            if row is None:
                continue  # already confirmed: recv is idempotent
            if user in self._counts:
                self._counts[user] -= 1
            self.items -= 1
            kind, sender = row
            if kind != KIND_MSG:
                continue
            if self._is_local(sender):
                receipts.append(self._insert(sender, KIND_RECEIPT, user, item_id, b""))
            else:
                ts = time.time_ns() // 1_000_000
                cursor = self._db.execute(
                    "INSERT INTO outbox (user, by, ref, ts) VALUES (?, ?, ?, ?)",
                    (sender, user, item_id, ts),
                )
                assert cursor.lastrowid is not None
                outbound.append(Outbound(cursor.lastrowid, sender, user, item_id, ts))
        return receipts, outbound

    def outbox(self) -> list[Outbound]:
        rows = self._db.execute("SELECT oid, user, by, ref, ts FROM outbox ORDER BY oid")
        return [Outbound(*row) for row in rows]

    def close(self) -> None:
        self._db.close()
