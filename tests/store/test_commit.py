"""roost.store.commit.GroupCommit over a real SQLiteInboxStore, on a real
event loop and its real store thread."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from roost.errors import StoreError
from roost.store.base import INBOX_FULL, Confirm, Item, Load, Op, Put
from roost.store.commit import GroupCommit
from roost.store.sqlite import SQLiteInboxStore

# A guard against a hang, not a performance bound: every wait below finishes
# in microseconds when the code is right.
HANG_GUARD = 60


class RecordingStore(SQLiteInboxStore):
    """The SQLite store, noting each batch it is given and on which thread.
    With ``gate`` set, a batch waits for it before touching the database, so a
    test can hold a batch in flight."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.batches: list[list[Op]] = []
        self.threads: set[int] = set()
        self.gate: threading.Event | None = None
        self.started = threading.Event()

    def apply(self, ops: list[Op]) -> list[Any]:
        self.batches.append(list(ops))
        self.threads.add(threading.get_ident())
        self.started.set()
        if self.gate is not None:
            self.gate.wait()
        return super().apply(ops)


class Done:
    """An on_done callback that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Op], list[Any] | StoreError]] = []
        self.loop_thread = threading.get_ident()
        self.threads: set[int] = set()

    def __call__(self, ops: list[Op], results: list[Any] | StoreError) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append((ops, results))


def run(coro, guard: float = HANG_GUARD):
    return asyncio.run(asyncio.wait_for(coro, guard))


@pytest.fixture
def store(tmp_path: Path):
    return RecordingStore(tmp_path / "inbox-0.db")


def test_needs_a_running_loop(store):
    with pytest.raises(RuntimeError):
        GroupCommit(store, Done())
    store.close()


def test_ops_of_one_loop_turn_are_one_batch(store):
    done = Done()

    async def main():
        gc = GroupCommit(store, done)
        ops = [Put("bob", "alice", str(i).encode(), ctx=i) for i in range(10)]
        for op in ops:
            gc.add(op)
        assert done.calls == []  # nothing is committed synchronously
        await gc.drain()
        assert store.batches == [ops]
        [(batch, results)] = done.calls
        assert batch == ops
        assert [r.body for r in results] == [str(i).encode() for i in range(10)]
        assert [op.ctx for op in batch] == list(range(10))
        assert (gc.batches, gc.ops) == (1, 10)
        gc.close()

    run(main())
    # Batches run on the store's thread, results are handled on the loop's.
    assert threading.get_ident() not in store.threads
    assert done.threads == {done.loop_thread}


def test_ops_of_separate_loop_turns_with_no_batch_in_flight(store):
    done = Done()

    async def main():
        gc = GroupCommit(store, done)
        gc.add(Put("bob", "alice", b"1"))
        await gc.drain()
        gc.add(Put("bob", "alice", b"2"))
        await gc.drain()
        assert len(store.batches) == 2
        assert [len(b) for b, _ in done.calls] == [1, 1]
        gc.close()

    run(main())


def test_ops_added_while_a_batch_is_in_flight_form_the_next_batch(store):
    done = Done()
    store.gate = threading.Event()

    async def main():
        gc = GroupCommit(store, done)
        first = Put("bob", "alice", b"first")
        gc.add(first)
        # Wait until the store thread holds the first batch.
        await asyncio.get_running_loop().run_in_executor(None, store.started.wait)
        later = [Put("bob", "alice", str(i).encode()) for i in range(5)]
        for op in later[:2]:
            gc.add(op)
        await asyncio.sleep(0)  # another loop turn: still the same next batch
        for op in later[2:]:
            gc.add(op)
        await asyncio.sleep(0)
        assert store.batches == [[first]]  # nothing started while one is in flight
        store.gate.set()
        await gc.drain()
        assert store.batches == [[first], later]
        assert [b for b, _ in done.calls] == [[first], later]
        # Batches commit in order, so ids follow the order ops were added.
        ids = [r.id for _, results in done.calls for r in results]
        assert ids == sorted(ids) and len(ids) == 6
        assert (gc.batches, gc.ops) == (2, 6)
        gc.close()

    run(main())


def test_results_reach_on_done_in_batch_order_and_match_the_store(store):
    done = Done()
    store.gate = threading.Event()

    async def main():
        gc = GroupCommit(store, done)
        gc.add(Put("bob", "alice", b"a"))
        await asyncio.get_running_loop().run_in_executor(None, store.started.wait)
        gc.add(Put("bob", "alice", b"b"))
        gc.add(Load("bob"))
        store.gate.set()
        await gc.drain()
        [(_, [a]), (_, [b, loaded])] = done.calls
        assert loaded == [a, b]
        gc.close()

    run(main())


def test_a_failed_batch_reaches_on_done_as_store_error(store, tmp_path):
    done = Done()

    async def main():
        gc = GroupCommit(store, done)
        bad = [Put("bob", "alice", b"1"), Put(None, "alice", b"2")]  # type: ignore[arg-type]
        for op in bad:
            gc.add(op)
        await gc.drain()
        [(batch, error)] = done.calls
        assert batch == bad
        assert isinstance(error, StoreError)
        assert (gc.batches, gc.ops) == (0, 0)  # only committed batches count
        # The next batch goes through.
        gc.add(Put("bob", "alice", b"3"))
        await gc.drain()
        [item] = done.calls[1][1]
        assert isinstance(item, Item) and item.body == b"3"
        assert (gc.batches, gc.ops) == (1, 1)
        gc.add(Load("bob"))
        await gc.drain()
        assert [i.body for i in done.calls[2][1][0]] == [b"3"]
        gc.close()

    run(main())


class Broken(SQLiteInboxStore):
    """A store that fails with something other than StoreError."""

    def apply(self, ops: list[Op]) -> list[Any]:
        if any(op.ctx == "explode" for op in ops):
            raise RuntimeError("disk on fire")
        return super().apply(ops)


def test_any_store_exception_reaches_on_done_as_store_error(tmp_path):
    done = Done()
    store = Broken(tmp_path / "inbox-0.db")

    async def main():
        gc = GroupCommit(store, done)
        gc.add(Put("bob", "alice", b"1", ctx="explode"))
        await gc.drain()
        [(_, error)] = done.calls
        assert isinstance(error, StoreError)
        assert "disk on fire" in str(error)
        gc.add(Put("bob", "alice", b"2"))
        await gc.drain()
        assert isinstance(done.calls[1][1][0], Item)
        gc.close()

    run(main())


def test_inbox_full_is_a_result_not_an_error(tmp_path):
    done = Done()
    store = SQLiteInboxStore(tmp_path / "inbox-0.db", inbox_cap=1)

    async def main():
        gc = GroupCommit(store, done)
        gc.add(Put("bob", "alice", b"1"))
        gc.add(Put("bob", "alice", b"2"))
        await gc.drain()
        [(_, [item, full])] = done.calls
        assert isinstance(item, Item) and full == INBOX_FULL
        gc.close()

    run(main())


def test_drain_with_nothing_pending_returns(store):
    async def main():
        gc = GroupCommit(store, Done())
        await gc.drain()
        await gc.drain()
        gc.close()

    run(main())


def test_drain_waits_for_ops_added_by_on_done(store):
    """The hub answers a commit with more ops (receipts after a confirm):
    drain covers them too."""
    calls: list[list[Op]] = []

    async def main():
        gc: GroupCommit

        def on_done(ops: list[Op], results: list[Any] | StoreError) -> None:
            calls.append(ops)
            if len(calls) < 3:
                gc.add(Put("bob", "alice", str(len(calls)).encode()))

        gc = GroupCommit(store, on_done)
        gc.add(Put("bob", "alice", b"0"))
        await gc.drain()
        assert [[op.body for op in ops] for ops in calls] == [[b"0"], [b"1"], [b"2"]]
        assert len(store.batches) == 3
        gc.close()

    run(main())


def test_many_concurrent_drains(store):
    async def main():
        gc = GroupCommit(store, Done())
        for i in range(3):
            gc.add(Put("bob", "alice", str(i).encode()))
        await asyncio.gather(*(gc.drain() for _ in range(5)))
        gc.add(Load("bob"))
        await gc.drain()
        gc.close()

    run(main())


def test_a_confirm_through_group_commit(store):
    done = Done()

    async def main():
        gc = GroupCommit(store, done)
        gc.add(Put("bob", "alice", b"hi"))
        await gc.drain()
        [msg] = done.calls[0][1]
        gc.add(Confirm("bob", [msg.id]))
        await gc.drain()
        [(receipts, _outbound)] = done.calls[1][1]
        assert [r.ref for r in receipts] == [msg.id]
        gc.close()

    run(main())


def test_close_closes_the_store(store, tmp_path):
    async def main():
        gc = GroupCommit(store, Done())
        gc.add(Put("bob", "alice", b"1"))
        await gc.drain()
        gc.close()

    run(main())
    with pytest.raises(Exception):  # noqa: B017 - sqlite3.ProgrammingError or StoreError
        store.apply([Load("bob")])
    # What was committed is on disk.
    reopened = SQLiteInboxStore(tmp_path / "inbox-0.db")
    assert [i.body for i in reopened.apply([Load("bob")])[0]] == [b"1"]
    reopened.close()


def test_an_exception_in_on_done_does_not_wedge_later_batches(store):
    """If on_done raises (a bug in the caller), the ops that arrived meanwhile
    must still be committed and drain() must still return; otherwise every
    later message waits forever and shutdown hangs in drain()."""
    seen: list[list[Op]] = []
    store.gate = threading.Event()

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, _context: None)  # expected: the caller bug

        def on_done(ops: list[Op], results: list[Any] | StoreError) -> None:
            seen.append(ops)
            if len(seen) == 1:
                raise ValueError("caller bug")

        gc = GroupCommit(store, on_done)
        gc.add(Put("bob", "alice", b"1"))
        await loop.run_in_executor(None, store.started.wait)
        second = Put("bob", "alice", b"2")
        gc.add(second)  # waits for the batch in flight
        store.gate.set()
        await gc.drain()
        assert seen[1] == [second]
        gc.close()

    run(main(), guard=10)
