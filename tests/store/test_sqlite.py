"""roost.store.base.IdGenerator and roost.store.sqlite.SQLiteInboxStore, on a
real SQLite file in tmp_path."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

import roost.store.sqlite as sqlite_module
from roost.errors import LocalError, StoreError
from roost.store.base import (
    INBOX_FULL,
    KIND_MSG,
    KIND_RECEIPT,
    ClearOutbox,
    Confirm,
    IdGenerator,
    Item,
    Load,
    Put,
    PutReceipt,
)
from roost.store.sqlite import SEEN_RECEIPTS_KEEP_MS, SQLiteInboxStore

ID_RE = re.compile(r"[0-9a-f]{20}")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "inbox-0.db"


@pytest.fixture
def store(path: Path):
    s = SQLiteInboxStore(path, inbox_cap=5)
    yield s
    s.close()


def put(store: SQLiteInboxStore, user: str, sender: str = "alice", body: bytes = b"{}") -> Item:
    [item] = store.apply([Put(user, sender, body)])
    assert isinstance(item, Item)
    return item


def load(store: SQLiteInboxStore, user: str) -> list[Item]:
    [items] = store.apply([Load(user)])
    return items


def confirm(store: SQLiteInboxStore, user: str, ids: list[str]) -> list[Item]:
    """Confirm with every sender local: the receipts, and nothing in the outbox."""
    [(receipts, outbound)] = store.apply([Confirm(user, ids)])
    assert outbound == []
    return receipts


def raw_rows(path: Path) -> list[tuple]:
    """What is committed, seen through a second connection."""
    db = sqlite3.connect(path)
    try:
        return db.execute(
            "SELECT user, id, kind, sender, ref, body FROM inbox ORDER BY id"
        ).fetchall()
    finally:
        db.close()


def add_failing_trigger(path: Path, user: str = "boom") -> None:
    """Make SQLite itself refuse an insert for ``user``, from another connection."""
    db = sqlite3.connect(path)
    db.execute(
        f"CREATE TRIGGER fail_{user} BEFORE INSERT ON inbox WHEN NEW.user = '{user}'"
        " BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
    )
    db.commit()
    db.close()


# ---- IdGenerator -------------------------------------------------------------------


def test_id_format():
    gen = IdGenerator(shard=0x2A)
    first = gen.next(0x0193A1B2C3D4)
    assert first == "0193a1b2c3d4" + "00000" + "02a"
    assert ID_RE.fullmatch(first)


def test_ids_in_one_ms_count_up():
    gen = IdGenerator()
    ids = [gen.next(1000) for _ in range(5)]
    assert [i[12:17] for i in ids] == ["00000", "00001", "00002", "00003", "00004"]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_a_new_ms_resets_the_sequence():
    gen = IdGenerator()
    gen.next(1000)
    gen.next(1000)
    assert gen.next(1001) == f"{1001:012x}00000000"


def test_clock_going_back_never_goes_back():
    gen = IdGenerator()
    a = gen.next(5000)
    b = gen.next(4000)  # the clock stepped back a second
    c = gen.next(1)
    d = gen.next(5000)
    e = gen.next(5001)
    assert a < b < c < d < e
    assert b[:12] == c[:12] == d[:12] == f"{5000:012x}"


def test_sequence_overflow_borrows_the_next_ms():
    gen = IdGenerator(last_id=f"{7:012x}fffff000")
    after = gen.next(7)
    assert after == f"{8:012x}00000000"
    # The real clock then reaching that ms continues after it.
    assert gen.next(8) == f"{8:012x}00001000"
    assert gen.next(9) == f"{9:012x}00000000"


def test_sequence_overflow_from_counting():
    gen = IdGenerator()
    last = gen.next(100)
    for _ in range(0xFFFFF):
        last = gen.next(100)
    assert last == f"{100:012x}fffff000"
    nxt = gen.next(100)
    assert nxt > last
    assert nxt == f"{101:012x}00000000"


def test_resume_from_last_id():
    last = f"{123456:012x}00007005"
    gen = IdGenerator(shard=5, last_id=last)
    assert gen.next(123456) == f"{123456:012x}00008005"
    gen = IdGenerator(shard=5, last_id=last)
    assert gen.next(100) > last  # a clock behind the stored ids
    gen = IdGenerator(shard=5, last_id=last)
    assert gen.next(123457) == f"{123457:012x}00000005"


def test_no_last_id_starts_from_the_clock():
    for last in (None, ""):
        assert IdGenerator(last_id=last).next(0) == "000000000000" + "00000000"


@pytest.mark.parametrize("shard", [-1, 0x1000, 10**6])
def test_shard_out_of_range(shard):
    with pytest.raises(ValueError):
        IdGenerator(shard)


@pytest.mark.parametrize("shard", [0, 1, 0xFFF])
def test_shard_suffix_is_three_hex_digits(shard):
    assert IdGenerator(shard).next(1).endswith(f"{shard:03x}")


def test_ids_are_fixed_width_so_string_order_is_numeric_order():
    gen = IdGenerator()
    ids = [gen.next(ms) for ms in (1, 15, 16, 255, 256, 4095, 1 << 40, (1 << 48) - 1)]
    assert all(len(i) == 20 for i in ids)
    assert ids == sorted(ids)


# ---- SQLiteInboxStore: put and load ------------------------------------------------------


def test_put_returns_the_stored_item(store):
    item = put(store, "bob", "alice", b'{"text":"hi"}')
    assert item.user == "bob"
    assert item.kind == KIND_MSG
    assert item.sender == "alice"
    assert item.ref is None
    assert item.body == b'{"text":"hi"}'
    assert ID_RE.fullmatch(item.id)
    assert isinstance(item.ts, int) and item.ts > 1_600_000_000_000  # unix ms, not s
    assert int(item.id[:12], 16) >= item.ts  # the id's ms never runs behind ts


def test_load_returns_items_in_put_order(store):
    items = [put(store, "bob", f"s{i}", f'"{i}"'.encode()) for i in range(5)]
    assert load(store, "bob") == items
    assert [i.sender for i in load(store, "bob")] == ["s0", "s1", "s2", "s3", "s4"]


def test_load_of_an_unknown_user_is_empty(store):
    assert load(store, "nobody") == []


def test_inboxes_are_separate(store):
    a = put(store, "bob")
    b = put(store, "carol")
    assert load(store, "bob") == [a]
    assert load(store, "carol") == [b]


def test_ids_strictly_increase_across_users_and_batches(path):
    store = SQLiteInboxStore(path, inbox_cap=10_000, shard=7)
    ids = []
    for _ in range(3):
        results = store.apply([Put(f"u{i % 7}", "s", b"1") for i in range(500)])
        ids.extend(r.id for r in results)
    store.close()
    assert len(set(ids)) == len(ids) == 1500
    assert ids == sorted(ids)
    assert all(ID_RE.fullmatch(i) and i.endswith("007") for i in ids)


def test_body_is_kept_byte_for_byte(store):
    body = bytes(range(256)) + b"\x00" + "é😀".encode()
    put(store, "bob", body=body)
    [item] = load(store, "bob")
    assert item.body == body and type(item.body) is bytes


def test_one_result_per_op_in_order(store):
    a = put(store, "bob")
    results = store.apply(
        [Load("bob"), Put("bob", "x", b"1"), Load("bob"), Confirm("bob", [a.id]), Load("bob")]
    )
    assert len(results) == 5
    assert results[0] == [a]
    new = results[1]
    assert isinstance(new, Item)
    assert results[2] == [a, new]
    assert [r.ref for r in results[3][0]] == [a.id] and results[3][1] == []
    assert results[4] == [new]


def test_empty_batch(store):
    assert store.apply([]) == []


def test_ctx_is_never_read(store):
    marker = object()
    [item] = store.apply([Put("bob", "alice", b"1", marker)])
    assert isinstance(item, Item)
    assert store.apply([Load("bob", marker)]) == [[item]]


def test_a_committed_batch_is_visible_to_another_connection(store, path):
    item = put(store, "bob", "alice", b"hi")
    assert raw_rows(path) == [("bob", item.id, KIND_MSG, "alice", None, b"hi")]


def test_wal_mode(store, path):
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


@pytest.mark.parametrize("fsync", ["full", "normal"])
def test_fsync_modes(tmp_path, fsync):
    store = SQLiteInboxStore(tmp_path / "x.db", fsync=fsync)
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == {"full": 2, "normal": 1}[fsync]
    put(store, "bob")
    store.close()


@pytest.mark.parametrize("fsync", ["FULL", "off", ""])
def test_bad_fsync_mode(tmp_path, fsync):
    with pytest.raises(ValueError):
        SQLiteInboxStore(tmp_path / "x.db", fsync=fsync)


def test_creates_the_data_directory(tmp_path):
    path = tmp_path / "a" / "b" / "inbox-3.db"
    SQLiteInboxStore(path).close()
    assert path.exists()


# ---- reopening ---------------------------------------------------------------------------


def test_data_survives_reopen(path):
    store = SQLiteInboxStore(path)
    items = [put(store, "bob", body=str(i).encode()) for i in range(3)]
    receipt_source = put(store, "carol", "bob")
    [receipt] = confirm(store, "carol", [receipt_source.id])
    store.close()
    store = SQLiteInboxStore(path)
    assert load(store, "bob") == [*items, receipt]
    assert load(store, "carol") == []
    store.close()


def test_ids_resume_above_the_largest_stored_id_after_reopen(path):
    store = SQLiteInboxStore(path)
    put(store, "bob")
    store.close()
    # An id far in the future, as if the clock had been ahead when it was written.
    future = "f00000000000" + "00042" + "000"
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO inbox (user, id, kind, sender, ref, ts, body) VALUES (?,?,?,?,?,?,?)",
        ("carol", future, KIND_MSG, "x", None, 0, b"1"),
    )
    db.commit()
    db.close()
    store = SQLiteInboxStore(path)
    item = put(store, "dave")
    store.close()
    assert item.id > future
    assert item.id == "f00000000000" + "00043" + "000"


def test_cap_counts_what_is_already_on_disk_after_reopen(path):
    store = SQLiteInboxStore(path, inbox_cap=3)
    for _ in range(3):
        put(store, "bob")
    store.close()
    store = SQLiteInboxStore(path, inbox_cap=3)
    assert store.apply([Put("bob", "alice", b"1")]) == [INBOX_FULL]
    store.close()


# ---- the inbox cap -----------------------------------------------------------------------


def test_inbox_cap(path):
    store = SQLiteInboxStore(path, inbox_cap=3)
    items = [put(store, "bob") for _ in range(3)]
    assert store.apply([Put("bob", "alice", b"dropped?")]) == [INBOX_FULL]
    # Nothing stored is dropped to make room.
    assert load(store, "bob") == items
    # Other inboxes are not affected.
    put(store, "carol")
    store.close()


def test_inbox_cap_inside_one_batch(path):
    store = SQLiteInboxStore(path, inbox_cap=3)
    results = store.apply([Put("bob", "alice", str(i).encode()) for i in range(5)])
    assert [r == INBOX_FULL for r in results] == [False, False, False, True, True]
    assert [i.body for i in load(store, "bob")] == [b"0", b"1", b"2"]
    store.close()


def test_confirming_frees_room(path):
    store = SQLiteInboxStore(path, inbox_cap=2)
    a = put(store, "bob")
    put(store, "bob")
    assert store.apply([Put("bob", "alice", b"x")]) == [INBOX_FULL]
    confirm(store, "bob", [a.id])
    assert isinstance(put(store, "bob"), Item)
    assert store.apply([Put("bob", "alice", b"x")]) == [INBOX_FULL]
    store.close()


def test_cap_of_zero_refuses_every_message(path):
    store = SQLiteInboxStore(path, inbox_cap=0)
    assert store.apply([Put("bob", "alice", b"x")]) == [INBOX_FULL]
    assert load(store, "bob") == []
    store.close()


def test_receipts_bypass_the_cap(path):
    store = SQLiteInboxStore(path, inbox_cap=1)
    msg = put(store, "bob", "alice")  # alice -> bob
    put(store, "alice", "carol")  # alice's inbox is now full
    assert store.apply([Put("alice", "dave", b"x")]) == [INBOX_FULL]
    [receipt] = confirm(store, "bob", [msg.id])
    assert receipt.user == "alice"
    assert [i.kind for i in load(store, "alice")] == [KIND_MSG, KIND_RECEIPT]
    store.close()


def test_a_receipt_to_a_sender_not_yet_counted_counts_once(path):
    """alice's inbox was never counted in this process when bob's receipt for
    her arrives; after it she holds one item, so with a cap of 2 she can still
    take one message."""
    store = SQLiteInboxStore(path, inbox_cap=2)
    msg = put(store, "bob", "alice")
    confirm(store, "bob", [msg.id])  # a receipt into alice's inbox
    assert len(load(store, "alice")) == 1
    store.close()
    store = SQLiteInboxStore(path, inbox_cap=2)
    msg = put(store, "bob", "carol")
    confirm(store, "bob", [msg.id])  # a receipt into carol's uncounted inbox
    result = store.apply([Put("carol", "dave", b"x")])
    assert isinstance(result[0], Item), result
    store.close()


def test_receipt_count_is_exact_without_a_load_in_between(path):
    store = SQLiteInboxStore(path, inbox_cap=3)
    msgs = [put(store, "bob", "alice") for _ in range(2)]
    confirm(store, "bob", [m.id for m in msgs])  # 2 receipts to alice
    # alice holds 2 items, the cap is 3: exactly one more message fits.
    results = store.apply([Put("alice", "x", b"1"), Put("alice", "x", b"2")])
    assert [r == INBOX_FULL for r in results] == [False, True]
    store.close()


# ---- confirm -----------------------------------------------------------------------------


def test_confirm_removes_and_makes_a_receipt(store):
    msg = put(store, "bob", "alice")
    [receipt] = confirm(store, "bob", [msg.id])
    assert load(store, "bob") == []
    assert receipt.user == "alice"  # goes to the original sender
    assert receipt.kind == KIND_RECEIPT
    assert receipt.sender == "bob"  # "by"
    assert receipt.ref == msg.id
    assert receipt.body == b""
    assert receipt.id > msg.id
    assert load(store, "alice") == [receipt]


def test_confirm_is_idempotent(store):
    msg = put(store, "bob", "alice")
    assert len(confirm(store, "bob", [msg.id])) == 1
    assert confirm(store, "bob", [msg.id]) == []
    assert confirm(store, "bob", [msg.id, msg.id]) == []
    assert len(load(store, "alice")) == 1


def test_same_id_twice_in_one_confirm_makes_one_receipt(store):
    msg = put(store, "bob", "alice")
    assert len(confirm(store, "bob", [msg.id, msg.id])) == 1


def test_confirm_of_a_receipt_makes_no_receipt(store):
    msg = put(store, "bob", "alice")
    [receipt] = confirm(store, "bob", [msg.id])
    assert store.apply([Confirm("alice", [receipt.id])]) == [([], [])]
    assert load(store, "alice") == []
    assert load(store, "bob") == []


def test_confirm_of_unknown_ids(store):
    assert store.apply([Confirm("bob", ["nope", "", "f" * 20])]) == [([], [])]
    assert store.apply([Confirm("bob", [])]) == [([], [])]


def test_a_user_confirms_only_their_own_items(store):
    msg = put(store, "bob", "alice")
    assert confirm(store, "carol", [msg.id]) == []
    assert load(store, "bob") == [msg]


def test_confirm_many_keeps_the_rest_in_order(store):
    items = [put(store, "bob", f"s{i}") for i in range(5)]
    receipts = confirm(store, "bob", [items[3].id, items[1].id])
    assert [r.ref for r in receipts] == [items[3].id, items[1].id]
    assert [r.user for r in receipts] == ["s3", "s1"]
    assert load(store, "bob") == [items[0], items[2], items[4]]


def test_confirm_self_message_makes_a_receipt_to_self(store):
    msg = put(store, "bob", "bob")
    [receipt] = confirm(store, "bob", [msg.id])
    assert receipt.user == "bob" and receipt.sender == "bob"
    assert load(store, "bob") == [receipt]


# ---- failing batches ---------------------------------------------------------------------


def test_a_failing_batch_rolls_back_entirely(store, path):
    before = put(store, "bob", "alice")
    add_failing_trigger(path)
    ops = [Put("carol", "x", b"1"), Confirm("bob", [before.id]), Put("boom", "x", b"2")]
    with pytest.raises(StoreError) as info:
        store.apply(ops)
    assert isinstance(info.value, LocalError)
    assert isinstance(info.value.__cause__, sqlite3.Error)
    assert "refused by trigger" in str(info.value)
    # Nothing of it is left: carol got nothing, bob's item was not confirmed,
    # alice got no receipt.
    assert load(store, "carol") == []
    assert load(store, "bob") == [before]
    assert load(store, "alice") == []
    assert [r[1] for r in raw_rows(path)] == [before.id]


def test_the_store_works_after_a_failed_batch(store, path):
    add_failing_trigger(path)
    with pytest.raises(StoreError):
        store.apply([Put("bob", "x", b"1"), Put("boom", "x", b"2")])
    a = put(store, "bob")
    b = put(store, "bob")
    assert a.id < b.id
    assert load(store, "bob") == [a, b]


def test_a_failed_batch_does_not_count_its_rolled_back_items(path):
    store = SQLiteInboxStore(path, inbox_cap=2)
    add_failing_trigger(path)
    with pytest.raises(StoreError):
        store.apply([Put("bob", "x", b"1"), Put("bob", "x", b"2"), Put("boom", "x", b"3")])
    results = store.apply([Put("bob", "x", b"1"), Put("bob", "x", b"2")])
    assert all(isinstance(r, Item) for r in results)
    store.close()


def test_a_bad_value_is_a_store_error(store):
    with pytest.raises(StoreError):
        store.apply([Put("bob", "alice", b"ok"), Put(None, "alice", b"x")])  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.apply([Put("bob", "alice", object())])  # type: ignore[arg-type]
    assert load(store, "bob") == []


def test_ids_never_repeat_after_a_failed_batch(store, path):
    add_failing_trigger(path)
    with pytest.raises(StoreError):
        store.apply([Put("bob", "x", b"1"), Put("boom", "x", b"2")])
    a = put(store, "bob")
    assert load(store, "bob") == [a]


def test_a_batch_that_breaks_outside_sqlite_leaves_no_open_transaction(store, path):
    """A non-sqlite exception in the middle of a batch (a misuse: ids that are
    not a list) must not leave the transaction open: the rule is that a failed
    batch leaves nothing behind, and the next batch must not pay for it."""
    with pytest.raises(Exception):  # noqa: B017 - what matters is what follows
        store.apply([Put("bob", "alice", b"1"), Confirm("bob", None)])  # type: ignore[arg-type]
    assert raw_rows(path) == []
    assert store.apply([Load("bob")]) == [[]]
    assert isinstance(put(store, "carol"), Item)


def test_apply_after_close_is_a_store_error(path):
    store = SQLiteInboxStore(path)
    store.close()
    with pytest.raises(StoreError):
        store.apply([Put("bob", "alice", b"1")])


def test_second_writer_sees_the_lock(path, store):
    """BEGIN IMMEDIATE takes the write lock at the start of the batch: another
    connection holding it makes the batch fail as a whole, not half-way."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    store._db.execute("PRAGMA busy_timeout = 0")
    try:
        with pytest.raises(StoreError):
            store.apply([Put("bob", "alice", b"1")])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert load(store, "bob") == []
    assert isinstance(put(store, "bob"), Item)


# ---- the item counter ------------------------------------------------------------------


def test_items_counts_every_stored_item(path):
    store = SQLiteInboxStore(path)
    assert store.items == 0
    a = put(store, "bob", "alice")
    put(store, "bob", "alice")
    assert store.items == 2
    confirm(store, "bob", [a.id])  # -1 message, +1 receipt
    assert store.items == 2
    confirm(store, "bob", [a.id])  # idempotent
    assert store.items == 2
    store.close()
    store = SQLiteInboxStore(path)
    assert store.items == 2  # counted from disk on open
    store.close()


def test_items_after_a_failed_batch_is_what_is_committed(store, path):
    put(store, "bob")
    add_failing_trigger(path)
    with pytest.raises(StoreError):
        store.apply([Put("bob", "x", b"1"), Put("bob", "x", b"2"), Put("boom", "x", b"3")])
    assert store.items == 1 == len(raw_rows(path))


# ---- receipts for senders another store owns (the outbox) ---------------------------------


@pytest.fixture
def sharded(path):
    """A store that owns every user but the ones whose name starts with "r"."""
    s = SQLiteInboxStore(path, is_local=lambda user: not user.startswith("r"))
    yield s
    s.close()


def outbox_rows(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT oid, user, by, ref FROM outbox ORDER BY oid").fetchall()
    finally:
        db.close()


def test_receipt_for_a_remote_sender_goes_to_the_outbox(sharded, path):
    msg = put(sharded, "bob", "remy")
    local = put(sharded, "bob", "alice")
    [(receipts, outbound)] = sharded.apply([Confirm("bob", [msg.id, local.id])])
    assert [r.user for r in receipts] == ["alice"]
    [out] = outbound
    assert (out.user, out.by, out.ref) == ("remy", "bob", msg.id)
    assert isinstance(out.oid, int) and isinstance(out.ts, int)
    assert sharded.outbox() == [out]
    assert outbox_rows(path) == [(out.oid, "remy", "bob", msg.id)]
    # No inbox item for remy here: the owner's store will hold it.
    assert load(sharded, "remy") == []
    assert load(sharded, "bob") == []


def test_outbox_is_oldest_first_and_survives_reopen(path):
    store = SQLiteInboxStore(path, is_local=lambda user: False)
    msgs = [put(store, "bob", f"r{i}") for i in range(3)]
    outs = []
    for m in msgs:
        [(_, [out])] = store.apply([Confirm("bob", [m.id])])
        outs.append(out)
    assert store.outbox() == outs
    assert [o.oid for o in outs] == sorted(o.oid for o in outs)
    store.close()
    store = SQLiteInboxStore(path, is_local=lambda user: False)
    assert store.outbox() == outs
    store.close()


def test_clear_outbox(sharded):
    outs = []
    for sender in ("ra", "rb", "rc"):
        msg = put(sharded, "bob", sender)
        [(_, [out])] = sharded.apply([Confirm("bob", [msg.id])])
        outs.append(out)
    assert sharded.apply([ClearOutbox([outs[0].oid, outs[2].oid])]) == [None]
    assert sharded.outbox() == [outs[1]]
    # Unknown or already cleared oids are ignored.
    assert sharded.apply([ClearOutbox([outs[0].oid, 10**9]), ClearOutbox([])]) == [None, None]
    assert sharded.outbox() == [outs[1]]


def test_outbox_entry_is_rolled_back_with_its_confirm(sharded, path):
    msg = put(sharded, "bob", "remy")
    add_failing_trigger(path)
    with pytest.raises(StoreError):
        sharded.apply([Confirm("bob", [msg.id]), Put("boom", "x", b"1")])
    assert sharded.outbox() == []
    assert load(sharded, "bob") == [msg]


def test_put_receipt_stores_a_forwarded_receipt(store):
    [item] = store.apply([PutReceipt("alice", "bob", "0193a1b2c3d400000001", 1764172800456)])
    assert isinstance(item, Item)
    assert item.user == "alice"
    assert item.kind == KIND_RECEIPT
    assert item.sender == "bob"
    assert item.ref == "0193a1b2c3d400000001"
    assert item.ts == 1764172800456  # the time of the confirm, not of the forward
    assert item.body == b""
    assert ID_RE.fullmatch(item.id)
    assert load(store, "alice") == [item]


def test_put_receipt_twice_is_stored_once(store):
    op = PutReceipt("alice", "bob", "ref-1", 5)
    [first] = store.apply([op])
    assert store.apply([op]) == [None]
    assert store.apply([op, op]) == [None, None]
    assert load(store, "alice") == [first]
    assert store.items == 1
    # The same ref for another user, or another ref, is a different receipt.
    [other] = store.apply([PutReceipt("carol", "bob", "ref-1", 5)])
    assert isinstance(other, Item)


def test_put_receipt_twice_in_one_batch(store):
    op = PutReceipt("alice", "bob", "ref-1", 5)
    first, second = store.apply([op, op])
    assert isinstance(first, Item) and second is None
    assert load(store, "alice") == [first]


def test_put_receipt_bypasses_the_cap(path):
    store = SQLiteInboxStore(path, inbox_cap=1)
    put(store, "alice")
    assert store.apply([Put("alice", "x", b"1")]) == [INBOX_FULL]
    [item] = store.apply([PutReceipt("alice", "bob", "ref", 1)])
    assert isinstance(item, Item)
    assert len(load(store, "alice")) == 2
    store.close()


def test_a_forwarded_receipt_then_counts_exactly(path):
    store = SQLiteInboxStore(path, inbox_cap=2)
    store.apply([PutReceipt("alice", "bob", "ref", 1)])
    # alice holds 1 item, the cap is 2: one message still fits.
    assert isinstance(store.apply([Put("alice", "x", b"1")])[0], Item)
    store.close()


def test_confirming_a_forwarded_receipt_makes_no_receipt(sharded):
    [item] = sharded.apply([PutReceipt("alice", "remy", "ref", 1)])
    assert sharded.apply([Confirm("alice", [item.id])]) == [([], [])]
    assert sharded.outbox() == []
    assert load(sharded, "alice") == []


def test_a_resent_receipt_after_it_was_confirmed_is_not_stored_again(store):
    """The sender's store resends an outbox entry it has no answer for (a crash
    between PutReceipt and ClearOutbox). If alice confirmed the first copy in
    between, the resend must not become a second receipt with a new id: clients
    dedupe by id (docs/protocol.md), so they could not tell."""
    op = PutReceipt("alice", "bob", "ref-1", 5)
    [first] = store.apply([op])
    assert store.apply([Confirm("alice", [first.id])]) == [([], [])]
    assert store.apply([op]) == [None]
    assert load(store, "alice") == []


# ---- the count cache -------------------------------------------------------------------


def test_cap_holds_when_the_count_cache_is_dropped(path, monkeypatch):
    monkeypatch.setattr(sqlite_module, "_COUNT_CACHE_MAX", 2)
    store = SQLiteInboxStore(path, inbox_cap=2)
    # Five users in one batch: the cache grows past its bound and is dropped.
    store.apply([Put(f"u{i}", "x", b"1") for i in range(5)])
    assert store._counts == {}
    # Recounted from disk: each holds 1 of 2.
    results = store.apply([Put(f"u{i}", "x", b"2") for i in range(5)])
    assert all(isinstance(r, Item) for r in results)
    assert store.apply([Put("u0", "x", b"3")]) == [INBOX_FULL]
    store.close()


def test_confirm_by_a_user_not_yet_counted(path):
    store = SQLiteInboxStore(path, inbox_cap=2)
    a = put(store, "bob")
    put(store, "bob")
    store.close()
    store = SQLiteInboxStore(path, inbox_cap=2)  # bob's count is not cached now
    confirm(store, "bob", [a.id])
    assert isinstance(put(store, "bob"), Item)
    assert store.apply([Put("bob", "x", b"1")]) == [INBOX_FULL]
    store.close()


def test_seen_receipts_survive_reopen(path):
    ts = time.time_ns() // 1_000_000  # a receipt confirmed just now
    store = SQLiteInboxStore(path)
    [first] = store.apply([PutReceipt("alice", "bob", "ref-1", ts)])
    confirm(store, "alice", [first.id])
    store.close()
    store = SQLiteInboxStore(path)
    assert store.apply([PutReceipt("alice", "bob", "ref-1", ts)]) == [None]
    assert load(store, "alice") == []
    store.close()


def test_seen_receipts_older_than_the_keep_window_are_forgotten(path):
    """The dedupe table is bounded: an entry older than SEEN_RECEIPTS_KEEP_MS
    is pruned (at the first forward a store handles), so it no longer blocks."""
    old = time.time_ns() // 1_000_000 - SEEN_RECEIPTS_KEEP_MS - 60_000
    store = SQLiteInboxStore(path)
    store.apply([PutReceipt("alice", "bob", "old-ref", old)])
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM seen_receipts").fetchone()[0] == 1
    db.close()
    store = SQLiteInboxStore(path)  # a new store prunes at its first forward
    store.apply([PutReceipt("carol", "bob", "new-ref", old + SEEN_RECEIPTS_KEEP_MS)])
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT user, ref FROM seen_receipts").fetchall() == [("carol", "new-ref")]
    db.close()
