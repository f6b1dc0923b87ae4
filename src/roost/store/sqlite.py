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
- A group message is an inbox item of kind ``KIND_GROUP`` whose ``ref`` is the
  group id; confirming it stores no receipt. Group membership lives in the
  store of the group's owner worker, last-seen times in the user's owner's.
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
    KIND_GROUP,
    KIND_MSG,
    KIND_RECEIPT,
    SYSTEM_SENDER,
    TOO_MANY,
    ClearOutbox,
    Confirm,
    DeleteGroup,
    EditGroup,
    GetGroup,
    IdGenerator,
    Item,
    LastSeen,
    Load,
    Op,
    Outbound,
    Put,
    PutReceipt,
    Seen,
    SetGroup,
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
-- Groups live in the store of the group's owner worker (routing.owner_of of
-- the group id); their members' inboxes may be anywhere.
CREATE TABLE IF NOT EXISTS groups (
    gid     TEXT    PRIMARY KEY,
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    gid  TEXT NOT NULL,
    user TEXT NOT NULL,
    PRIMARY KEY (gid, user)
) WITHOUT ROWID;
-- When each user this store owns last went offline, for presence.
CREATE TABLE IF NOT EXISTS last_seen (
    user TEXT    PRIMARY KEY,
    ts   INTEGER NOT NULL
) WITHOUT ROWID;
"""

SEEN_RECEIPTS_KEEP_MS = 7 * 86_400_000  # far longer than any resend can lag
PRUNE_INTERVAL = 3600.0  # seconds between prunes of seen_receipts (a table scan)
_COUNT_CACHE_MAX = 100_000  # users whose inbox size is remembered between batches
_RECENT_MAX = 500_000  # unconfirmed items whose owner and sender are remembered


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
        # item id -> (user, kind, sender) of items stored and not yet confirmed,
        # so that a confirm, which usually follows its delivery closely, needs
        # no read; bounded, dropped wholesale when full (a miss reads the row).
        self._recent: dict[str, tuple[str, int, str]] = {}
        self._next_oid = (self._db.execute("SELECT MAX(oid) FROM outbox").fetchone()[0] or 0) + 1
        # Writes of the batch being applied, done with one executemany each.
        self._inserts: list[tuple[Any, ...]] = []
        self._deletes: list[tuple[str, str]] = []
        self._deleting: set[tuple[str, str]] = set()  # the same, for lookups
        self._outbox_rows: list[tuple[int, str, str, str, int]] = []
        self._seen: dict[str, int] = {}  # user -> went offline at, unix ms

    def apply(self, ops: list[Op]) -> list[Any]:
        """Apply ``ops`` in one transaction.

        The ops are first walked in order in Python (ids, cap checks, receipt
        decisions), collecting the writes; then each kind of write is one
        ``executemany``. A ``Load`` reads the inbox as it was before the batch
        and applies the batch's writes that precede it, so it sees exactly
        what precedes it and nothing that follows.
        """
        db = self._db
        # (position, user, inserts before it, deletes before it)
        loads: list[tuple[int, str, int, int]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            results: list[Any] = []
            for position, op in enumerate(ops):
                if type(op) is Load:
                    loads.append((position, op.user, len(self._inserts), len(self._deletes)))
                    results.append(None)
                else:
                    results.append(self._apply_one(op))
            for position, user, inserts, deletes in loads:
                results[position] = self._load(user, inserts, deletes)
            if self._inserts:
                db.executemany(
                    "INSERT INTO inbox (user, id, kind, sender, ref, ts, body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    self._inserts,
                )
            if self._deletes:
                db.executemany("DELETE FROM inbox WHERE user = ? AND id = ?", self._deletes)
            if self._outbox_rows:
                db.executemany(
                    "INSERT INTO outbox (oid, user, by, ref, ts) VALUES (?, ?, ?, ?, ?)",
                    self._outbox_rows,
                )
            if self._seen:
                db.executemany(
                    "INSERT INTO last_seen (user, ts) VALUES (?, ?)"
                    " ON CONFLICT (user) DO UPDATE SET ts = excluded.ts",
                    self._seen.items(),
                )
            db.execute("COMMIT")
        except Exception as exc:
            # Whatever broke (SQLite, the disk, a bug), nothing of the batch
            # may stay behind half-applied, and nothing of it is acked.
            self._counts.clear()  # it counted writes that are rolled back
            self._recent.clear()
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
                self.items = db.execute("SELECT COUNT(*) FROM inbox").fetchone()[0]
                self._next_oid = (db.execute("SELECT MAX(oid) FROM outbox").fetchone()[0] or 0) + 1
            raise StoreError(f"inbox write failed: {exc}") from exc
        finally:
            self._inserts = []
            self._deletes = []
            self._deleting = set()
            self._outbox_rows = []
            self._seen = {}
        if len(self._counts) > _COUNT_CACHE_MAX:
            self._counts.clear()
        if len(self._recent) > _RECENT_MAX:
            self._recent.clear()
        return results

    def _apply_one(self, op: Op) -> Any:
        if type(op) is Put:
            if self._count(op.user) >= self._cap:
                return INBOX_FULL
            if op.group is None:
                return self._insert(op.user, KIND_MSG, op.sender, None, op.body)
            return self._insert(op.user, KIND_GROUP, op.sender, op.group, op.body)
        if type(op) is Confirm:
            return self._confirm(op.user, op.ids)
        if type(op) is PutReceipt:
            return self._put_receipt(op)
        if type(op) is ClearOutbox:
            self._db.executemany("DELETE FROM outbox WHERE oid = ?", [(o,) for o in op.oids])
            return None
        if type(op) is Seen:
            self._seen[op.user] = op.ts
            return None
        return self._apply_group_or_presence(op)

    def _apply_group_or_presence(self, op: Op) -> Any:
        """Groups and last-seen times. Their writes run at once, inside the
        batch's transaction; they are few next to inbox writes."""
        db = self._db
        if type(op) is GetGroup:
            return self._members(op.gid)
        if type(op) is SetGroup:
            db.execute(
                "INSERT OR IGNORE INTO groups (gid, created) VALUES (?, ?)",
                (op.gid, time.time_ns() // 1_000_000),
            )
            db.execute("DELETE FROM members WHERE gid = ?", (op.gid,))
            members = sorted(set(op.members))
            db.executemany(
                "INSERT INTO members (gid, user) VALUES (?, ?)", [(op.gid, m) for m in members]
            )
            return members
        if type(op) is EditGroup:
            current = self._members(op.gid)
            if current is None:
                return None
            after = (set(current) | set(op.add)) - set(op.remove)
            if len(after) > op.limit:
                return TOO_MANY
            db.executemany(
                "INSERT OR IGNORE INTO members (gid, user) VALUES (?, ?)",
                [(op.gid, m) for m in op.add],
            )
            db.executemany(
                "DELETE FROM members WHERE gid = ? AND user = ?", [(op.gid, m) for m in op.remove]
            )
            return sorted(after)
        if type(op) is DeleteGroup:
            existed = db.execute("DELETE FROM groups WHERE gid = ?", (op.gid,)).rowcount > 0
            db.execute("DELETE FROM members WHERE gid = ?", (op.gid,))
            return existed
        assert type(op) is LastSeen
        found = {u: self._seen[u] for u in op.users if u in self._seen}
        rest = [u for u in op.users if u not in found]
        for start in range(0, len(rest), 500):  # under SQLite's limit on variables
            part = rest[start : start + 500]
            marks = ",".join("?" * len(part))
            found.update(
                db.execute(f"SELECT user, ts FROM last_seen WHERE user IN ({marks})", part)
            )
        return found

    def _members(self, gid: str) -> list[str] | None:
        db = self._db
        if db.execute("SELECT 1 FROM groups WHERE gid = ?", (gid,)).fetchone() is None:
            return None
        rows = db.execute("SELECT user FROM members WHERE gid = ? ORDER BY user", (gid,))
        return [row[0] for row in rows]

    def _load(self, user: str, inserts: int, deletes: int) -> list[Item]:
        """``user``'s inbox after the first ``inserts`` and ``deletes`` of the
        batch; called before the batch's writes reach the database. Items of
        the batch have higher ids than any stored, so they go last."""
        gone = {item_id for who, item_id in self._deletes[:deletes] if who == user}
        rows = self._db.execute(
            "SELECT id, kind, sender, ref, ts, body FROM inbox WHERE user = ? ORDER BY id",
            (user,),
        ).fetchall()
        rows += [r[1:] for r in self._inserts[:inserts] if r[0] == user]
        return [Item(r[0], user, r[1], r[2], r[3], r[4], r[5]) for r in rows if r[0] not in gone]

    def _count(self, user: str) -> int:
        """Items in ``user``'s inbox, this batch's writes included. The first
        call for a user reads before any of the batch's writes for them are
        collected (every write path calls this first), so the count is exact."""
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
        count = self._count(user)
        now = time.time_ns() // 1_000_000
        item = Item(self._ids.next(now), user, kind, sender, ref, now if ts is None else ts, body)
        self._inserts.append((user, item.id, kind, sender, ref, item.ts, body))
        self._recent[item.id] = (user, kind, sender)
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

    def _lookup(self, user: str, item_id: str) -> tuple[int, str] | None:
        """(kind, sender) of ``user``'s unconfirmed item, and forget it: a
        second confirm of the same id, even in the same batch, finds nothing."""
        entry = self._recent.pop(item_id, None)
        if entry is not None:
            if entry[0] == user:
                return entry[1], entry[2]
            self._recent[item_id] = entry  # someone else's id: not ours to confirm
            return None
        if (user, item_id) in self._deleting:
            return None
        row = self._db.execute(
            "SELECT kind, sender FROM inbox WHERE user = ? AND id = ?", (user, item_id)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def _confirm(self, user: str, ids: list[str]) -> tuple[list[Item], list[Outbound]]:
        receipts: list[Item] = []
        outbound: list[Outbound] = []
        count = self._count(user)
        for item_id in ids:
            found = self._lookup(user, item_id)
            if found is None:
                continue  # unknown or already confirmed: recv is idempotent
            self._deletes.append((user, item_id))
            self._deleting.add((user, item_id))
            count -= 1
            self.items -= 1
            kind, sender = found
            if kind != KIND_MSG or sender == SYSTEM_SENDER:
                continue  # receipts, group messages and the backend's get none
            if self._is_local(sender):
                receipts.append(self._insert(sender, KIND_RECEIPT, user, item_id, b""))
            else:
                entry = Outbound(self._next_oid, sender, user, item_id, time.time_ns() // 1_000_000)
                self._next_oid += 1
                self._outbox_rows.append(entry)
                outbound.append(entry)
        self._counts[user] = count
        return receipts, outbound

    def outbox(self) -> list[Outbound]:
        rows = self._db.execute("SELECT oid, user, by, ref, ts FROM outbox ORDER BY oid")
        return [Outbound(*row) for row in rows]

    def close(self) -> None:
        self._db.close()
