"""The SQLite store's group, group-message and last-seen ops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roost.errors import StoreError
from roost.store.base import (
    KIND_GROUP,
    KIND_MSG,
    SYSTEM_SENDER,
    TOO_MANY,
    Confirm,
    DeleteGroup,
    EditGroup,
    GetGroup,
    LastSeen,
    Load,
    Put,
    Seen,
    SetGroup,
)
from roost.store.sqlite import SQLiteInboxStore


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SQLiteInboxStore(tmp_path / "inbox.db", fsync="normal")
    yield s
    s.close()


def test_set_get_edit_delete(store):  # type: ignore[no-untyped-def]
    assert store.apply([GetGroup("g")]) == [None]
    assert store.apply([SetGroup("g", ["c", "a", "b", "a"])]) == [["a", "b", "c"]]
    assert store.apply([GetGroup("g")]) == [["a", "b", "c"]]
    # Add first, then remove: one in both ends up out.
    assert store.apply([EditGroup("g", ["d", "e"], ["a", "e", "zz"], 10)]) == [["b", "c", "d"]]
    assert store.apply([EditGroup("g", ["x", "y"], [], 4)]) == [TOO_MANY]
    assert store.apply([GetGroup("g")]) == [["b", "c", "d"]]  # unchanged
    assert store.apply([EditGroup("nope", ["a"], [], 10)]) == [None]
    assert store.apply([SetGroup("g", ["q"])]) == [["q"]]  # replaces
    assert store.apply([DeleteGroup("g"), GetGroup("g"), DeleteGroup("g")]) == [True, None, False]


def test_an_empty_group_exists(store):  # type: ignore[no-untyped-def]
    assert store.apply([SetGroup("g", []), GetGroup("g")]) == [[], []]
    assert store.apply([EditGroup("g", [], ["x"], 10)]) == [[]]


def test_groups_survive_a_reopen(tmp_path: Path):
    store = SQLiteInboxStore(tmp_path / "inbox.db")
    store.apply([SetGroup("g", ["a", "b"]), SetGroup("h", ["c"]), DeleteGroup("h")])
    store.close()
    store = SQLiteInboxStore(tmp_path / "inbox.db")
    assert store.apply([GetGroup("g"), GetGroup("h")]) == [["a", "b"], None]
    store.close()


def test_group_writes_of_a_failed_batch_roll_back(store):  # type: ignore[no-untyped-def]
    store.apply([SetGroup("g", ["a"])])
    bad: Any = object()  # not an op: the store fails the whole batch
    with pytest.raises(StoreError):
        store.apply([SetGroup("g", ["b"]), Put("u", "s", b"1"), bad])
    assert store.apply([GetGroup("g")]) == [["a"]]


def test_a_group_message_is_kind_group_with_the_group_id(store):  # type: ignore[no-untyped-def]
    [item] = store.apply([Put("bob", "alice", b'{"text":"hi"}', group="g1")])
    assert (item.kind, item.ref, item.sender, item.user) == (KIND_GROUP, "g1", "alice", "bob")
    [loaded] = store.apply([Load("bob")])
    assert [(i.id, i.kind, i.ref) for i in loaded] == [(item.id, KIND_GROUP, "g1")]
    # Confirming a group message stores no receipt for its sender.
    [(receipts, outbound)] = store.apply([Confirm("bob", [item.id])])
    assert receipts == [] and outbound == []
    assert store.apply([Load("alice"), Load("bob")]) == [[], []]


def test_messages_from_system_get_no_receipt(store):  # type: ignore[no-untyped-def]
    [item] = store.apply([Put("bob", SYSTEM_SENDER, b"1")])
    assert item.kind == KIND_MSG
    [(receipts, outbound)] = store.apply([Confirm("bob", [item.id])])
    assert receipts == [] and outbound == []
    assert store.apply([Load(SYSTEM_SENDER)]) == [[]]


def test_last_seen(tmp_path: Path):
    store = SQLiteInboxStore(tmp_path / "inbox.db")
    assert store.apply([LastSeen(["a", "b"])]) == [{}]
    # Within one batch the later write wins, and a read sees the batch's writes.
    results = store.apply([Seen("a", 5), Seen("a", 7), Seen("b", 1), LastSeen(["a", "b", "c"])])
    assert results == [None, None, None, {"a": 7, "b": 1}]
    store.apply([Seen("b", 9)])
    store.close()
    store = SQLiteInboxStore(tmp_path / "inbox.db")
    users = ["a", "b"] + [f"x{i}" for i in range(1200)]  # more than one IN (...) query
    assert store.apply([LastSeen(users)]) == [{"a": 7, "b": 9}]
    store.close()
