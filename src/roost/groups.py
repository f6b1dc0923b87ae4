"""Groups: membership on the group's owner worker, fan-out to every member's inbox.

Rules:
- A group belongs to one worker, ``owner_of(group id)``, as a user does. Its
  membership is in that worker's store (tables ``groups`` and ``members``)
  and in a bounded cache there. Only that worker changes it (the HTTP API's
  group calls are forwarded to it) and it updates the cache in commit order,
  so the cache is never stale.
- A group send goes to the group's owner (``GSEND``), which answers
  ``bad_request`` for an unknown group and ``forbidden`` for a sender who is
  not a member, and otherwise fans out: the members other than the sender,
  grouped by their owner worker, in chunks of ``FANOUT_CHUNK``. Each chunk is
  one ``GPUT`` to the members' owner (or is queued here when that is us).
- A member's owner stores the chunk as ordinary ``Put``s of a group message,
  so each member is served as in 1:1: delivered live when online, pushed
  when offline, kept in the inbox until confirmed. It answers ``ACKED`` once
  every ``Put`` of the chunk is committed.

The ack rule: the sender gets one ack, with the group message's id, once
every chunk is answered ``ACKED``, i.e. once the message is committed in the
inbox of every member. There is no ack otherwise:
- a chunk whose worker cannot be reached, dies before answering or fails
  its commit fails the whole send with ``internal``. Some members may
  already have the message; the client sends it again and they get it twice
  (at least once, as for a 1:1 send whose ack was lost);
- the group's owner dying fails the send on the sender's worker
  (``Hub.on_link_down``), the same way.
A member whose inbox is full (``inbox_cap``) is skipped and counted, like a
bounce: one dormant member must not block a group.

Backpressure: a group owner with more than ``MAX_IN_FLIGHT`` member
deliveries not yet answered refuses new group sends with ``rate_limited``
(nothing stored), so senders to big groups cannot queue unbounded work.

Fan-out does not stall other traffic: each worker feeds the group ``Put``s it
has queued to its group commit at most ``FANOUT_BATCH`` per batch, the next
ones only once those are committed, so a 10,000-member fan-out is a series
of batches with other ops between them, not one huge batch and loop turn.
A group message produces no receipt (10,000 receipts per message would flood
its sender); its ack says it is durable for everyone.
"""

from __future__ import annotations

import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

from roost.errors import StoreError
from roost.store.base import TOO_MANY, DeleteGroup, EditGroup, GetGroup, Put, SetGroup
from roost.waiter import Waiter
from roost.workers import codec

if TYPE_CHECKING:
    from collections.abc import Callable

    from roost.hub import Hub

FANOUT_CHUNK = 1000  # members per GPUT (and per local chunk)
FANOUT_BATCH = 250  # group Puts per commit batch on one worker
CACHE_MEMBERS = 500_000  # memberships cached per worker (~100 B each) before the cache is dropped
MAX_IN_FLIGHT = 2_000_000  # member deliveries of unanswered fan-outs one group owner allows
PARTIAL = "the message could not be stored for every member; send it again"
UNKNOWN_GROUP = "unknown group "  # the reason of a send to a group that does not exist


class _Entry:
    """A cached group: its members, and the same split by owner worker."""

    __slots__ = ("by_owner", "members")

    def __init__(self, members: frozenset[str], by_owner: dict[int, list[str]]) -> None:
        self.members = members
        self.by_owner = by_owner


class Fanout(Waiter):
    """One group message on the group's owner: answers its origin once every
    chunk is durable, or fails it at the first chunk that is not."""

    __slots__ = ("cid", "done", "groups", "id", "members", "origin", "pending", "ts")

    def __init__(
        self, groups: Groups, origin: Any, cid: Any, item_id: str, ts: int, members: int
    ) -> None:
        self.groups = groups
        self.origin = origin
        self.cid = cid
        self.id = item_id
        self.ts = ts
        self.members = members  # member deliveries it counts in Groups.in_flight
        self.pending = 0  # chunks not yet answered
        self.done = False

    def acked(self, item_id: str, ts: int) -> None:
        if self.done:
            return
        self.pending -= 1
        if self.pending == 0:
            self._finish()
            self.groups.hub.answer(self.origin, self.cid, self.id, self.ts)

    def failed(self, code: str, reason: str) -> None:
        if not self.done:
            self._finish()
            self.groups.hub.answer_error(self.origin, self.cid, "internal", PARTIAL)

    def _finish(self) -> None:
        self.done = True
        self.groups.in_flight -= self.members


class Chunk(Waiter):
    """Members of one group message on their owner: answers its origin (a
    peer's GPUT or a local Fanout) once each member's Put is committed."""

    __slots__ = ("cid", "done", "groups", "origin", "pending")

    def __init__(self, groups: Groups, origin: Any, cid: Any, members: int) -> None:
        self.groups = groups
        self.origin = origin
        self.cid = cid
        self.pending = members  # Puts not yet committed
        self.done = False

    def acked(self, item_id: str, ts: int) -> None:
        self.groups.put_done()
        self.pending -= 1
        if self.pending == 0 and not self.done:
            self.done = True
            self.groups.hub.answer(self.origin, self.cid, "", 0)

    def failed(self, code: str, reason: str) -> None:
        if code == "inbox_full":
            self.groups.skipped += 1
            self.acked("", 0)
            return
        self.groups.put_done()
        if not self.done:
            self.done = True
            self.groups.hub.answer_error(self.origin, self.cid, code, reason)


class _GroupIds:
    """Ids of group messages, made on the group's owner: the store's id format
    (base.IdGenerator) with sequence numbers from 0x80000 up, a half the
    store's own ids of a millisecond never reach, so the two never collide."""

    __slots__ = ("_last_ms", "_seq", "_suffix")

    def __init__(self, shard: int) -> None:
        self._suffix = f"{shard:03x}"
        self._last_ms = -1
        self._seq = 0

    def next(self, now_ms: int) -> str:
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._seq = 0x80000
        else:
            self._seq += 1
            if self._seq > 0xFFFFF:
                self._last_ms += 1
                self._seq = 0x80000
        return f"{self._last_ms:012x}{self._seq:05x}{self._suffix}"


_MISSING = object()


class Groups:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._cache: dict[str, _Entry | None] = {}  # group id -> entry; None: no such group
        self._cached = 0  # memberships counted into the cache since it was last dropped
        self._loading: dict[str, list[tuple[Any, Any, str, bytes, bool]]] = {}
        # Chunks waiting to be stored here: [chunk, group, sender, body, members, next index]
        self._queue: deque[list[Any]] = deque()
        self._in_commit = 0  # group Puts added to the group commit, not yet committed
        self._ids = _GroupIds(hub.index)
        self.in_flight = 0  # member deliveries of this owner's unanswered fan-outs
        self.skipped = 0  # members skipped because their inbox was full

    # ---- on the group's owner ----------------------------------------------

    def send(self, origin: Any, cid: Any, gid: str, sender: str, body: bytes, check: bool) -> None:
        """Fan a message out to the members of ``gid`` (owned here); with
        ``check``, only if ``sender`` is one of them."""
        entry = self._cache.get(gid, _MISSING)
        if not isinstance(entry, _Entry | None):
            waiting = self._loading.get(gid)
            if waiting is None:
                waiting = self._loading[gid] = []
                self.hub.commit.add(GetGroup(gid, partial(self._loaded, gid)))
            waiting.append((origin, cid, sender, body, check))
            return
        self._fan_out(entry, origin, cid, gid, sender, body, check)

    def _loaded(self, gid: str, result: list[str] | StoreError | None) -> None:
        waiting = self._loading.pop(gid, [])
        if isinstance(result, StoreError):
            for origin, cid, *_ in waiting:
                self.hub.answer_error(origin, cid, "internal", "the group could not be read")
            return
        entry = self._remember(gid, result)
        for origin, cid, sender, body, check in waiting:
            self._fan_out(entry, origin, cid, gid, sender, body, check)

    def _fan_out(
        self,
        entry: _Entry | None,
        origin: Any,
        cid: Any,
        gid: str,
        sender: str,
        body: bytes,
        check: bool,
    ) -> None:
        hub = self.hub
        if entry is None:
            hub.answer_error(origin, cid, "bad_request", UNKNOWN_GROUP + gid)
            return
        if check and sender not in entry.members:
            hub.answer_error(origin, cid, "forbidden", f"{sender} is not a member of group {gid}")
            return
        if self.in_flight > MAX_IN_FLIGHT:
            reason = f"group {gid}: too many group deliveries in flight; send it again later"
            hub.answer_error(origin, cid, "rate_limited", reason)
            return
        chunks: list[tuple[int, list[str]]] = []
        for owner, members in entry.by_owner.items():
            if sender in entry.members and owner == hub.owner(sender):
                members = [m for m in members if m != sender]
            for start in range(0, len(members), FANOUT_CHUNK):
                chunks.append((owner, members[start : start + FANOUT_CHUNK]))
        ts = time.time_ns() // 1_000_000
        count = sum(len(part) for _, part in chunks)
        fanout = Fanout(self, origin, cid, self._ids.next(ts), ts, count)
        self.in_flight += count
        fanout.pending = len(chunks) or 1
        if not chunks:  # the sender is the only member
            fanout.acked("", 0)
            return
        for owner, part in chunks:
            if owner == hub.index:
                self.store(fanout, None, gid, sender, body, part)
            else:
                hub.send_remote(owner, fanout, None, codec.GPUT, gid, sender, body, part)

    def admin(self, action: str, gid: str, args: list[Any], reply: Callable[[Any], None]) -> None:
        """A group call of the HTTP API, on the group's owner: ``reply`` gets
        ``[HTTP status, JSON body or None]``."""
        done = partial(self._admin_done, action, gid, reply)
        if action == "get":
            entry = self._cache.get(gid, _MISSING)
            if isinstance(entry, _Entry):
                done(sorted(entry.members))
            elif entry is None:
                done(None)
            else:
                self.hub.commit.add(GetGroup(gid, done))
        elif action == "put":
            self.hub.commit.add(SetGroup(gid, args[0], done))
        elif action == "edit":
            limit = self.hub.settings.group_max_members
            self.hub.commit.add(EditGroup(gid, args[0], args[1], limit, done))
        elif action == "delete":
            self.hub.commit.add(DeleteGroup(gid, done))
        else:
            reply([400, {"error": f"unknown group action {action}"}])

    def _admin_done(self, action: str, gid: str, reply: Callable[[Any], None], result: Any) -> None:
        if isinstance(result, StoreError):
            reply([503, {"error": "the group could not be stored; retry"}])
        elif action == "delete":
            self._remember(gid, None)
            reply([204, None] if result else [404, {"error": f"no group {gid}"}])
        elif result is None:
            self._remember(gid, None)
            reply([404, {"error": f"no group {gid}"}])
        elif result is TOO_MANY:
            limit = self.hub.settings.group_max_members
            reply([400, {"error": f"a group holds at most {limit} members"}])
        else:
            self._remember(gid, result)
            reply([200, {"group": gid, "members": result}])

    def _remember(self, gid: str, members: list[str] | None) -> _Entry | None:
        entry = None
        if members is not None:
            by_owner: dict[int, list[str]] = {}
            owner = self.hub.owner
            for member in members:
                by_owner.setdefault(owner(member), []).append(member)
            entry = _Entry(frozenset(members), by_owner)
        self._cached += 1 + len(members or ())
        if self._cached > CACHE_MEMBERS:
            self._cache.clear()
            self._cached = 1 + len(members or ())
        self._cache[gid] = entry
        return entry

    # ---- on a member's owner -----------------------------------------------

    def store(
        self, origin: Any, cid: Any, gid: str, sender: str, body: bytes, members: list[str]
    ) -> None:
        """Store a group message for ``members`` (owned here), then answer
        ``origin`` (a peer's ref, or a local Fanout)."""
        if not members:
            self.hub.answer(origin, cid, "", 0)
            return
        self._queue.append([Chunk(self, origin, cid, len(members)), gid, sender, body, members, 0])
        if self._in_commit == 0:
            self._feed()

    def put_done(self) -> None:
        """One group Put was committed (or failed): feed the next batch once
        all of this one are."""
        self._in_commit -= 1
        if self._in_commit == 0 and self._queue:
            self._feed()

    def _feed(self) -> None:
        budget = FANOUT_BATCH
        add = self.hub.commit.add
        queue = self._queue
        while budget and queue:
            entry = queue[0]
            chunk, gid, sender, body, members, start = entry
            if chunk.done:  # failed: the rest of it is not stored
                queue.popleft()
                continue
            end = min(len(members), start + budget)
            ctx = (chunk, None)
            for member in members[start:end]:
                add(Put(member, sender, body, ctx, gid))
            budget -= end - start
            self._in_commit += end - start
            if end == len(members):
                queue.popleft()
            else:
                entry[5] = end
