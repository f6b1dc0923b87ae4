"""Presence: who is online, and when those who are not were last seen.

Rules:
- A user's owner worker alone knows whether they are online (``Hub.online``),
  so a request is split by owner and each part asked of its owner over the
  links (``Hub.call``); the answer goes out once every part is back.
- An owner that cannot be asked (restarting after a crash) holds no
  connection, so its users are answered offline, with ``last_seen`` null.
- ``last_seen`` is durable: when a user's last connection closes, the owner
  records the time (unix ms) in its store (``Seen``, batched with the other
  writes of the loop turn) and in a bounded cache; a lookup the cache cannot
  answer reads the store. It is therefore the last *recorded* disconnect: a
  worker killed with ``kill -9`` records none for the connections it held, so
  their users show the disconnect before. A user never recorded has
  ``last_seen`` null.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

from roost.errors import StoreError
from roost.store.base import LastSeen, Seen

if TYPE_CHECKING:
    from collections.abc import Callable

    from roost.hub import Hub

CACHE_MAX = 20_000  # users whose last-seen time is remembered between lookups (~120 B each)


class PresenceBook:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        # user -> when they went offline, unix ms; 0 = never recorded. Written
        # as disconnects happen, so it is always at least as new as the store.
        self._last_seen: dict[str, int] = {}

    def went_offline(self, user: str) -> None:
        ts = time.time_ns() // 1_000_000
        self._remember(user, ts)
        self.hub.commit.add(Seen(user, ts))

    def _remember(self, user: str, ts: int) -> None:
        if len(self._last_seen) >= CACHE_MAX:
            self._last_seen.clear()
        self._last_seen[user] = ts

    def query(self, users: list[str], reply: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        """Presence of ``users``, wherever their owners are: ``reply`` gets
        ``{user: {"online": true} | {"online": false, "last_seen": ms or null}}``."""
        users = list(dict.fromkeys(users))
        if not users:
            reply({})
            return
        hub = self.hub
        by_owner: dict[int, list[str]] = {}
        for user in users:
            by_owner.setdefault(hub.owner(user), []).append(user)
        answers: dict[str, dict[str, Any]] = {}
        pending = [len(by_owner)]

        def part(asked: list[str], result: list[list[Any]] | None) -> None:
            if result is None:  # the owner is restarting: none of them is connected
                result = [[False, None]] * len(asked)
            for user, (online, seen) in zip(asked, result, strict=True):
                answers[user] = {"online": True} if online else {"online": False, "last_seen": seen}
            pending[0] -= 1
            if pending[0] == 0:
                reply({user: answers[user] for user in users})

        for owner, asked in by_owner.items():
            hub.call(owner, "presence", asked, partial(part, asked))

    def local(self, users: list[str], reply: Callable[[list[list[Any]]], None]) -> None:
        """On the users' owner: ``reply`` gets ``[online, last_seen or None]``
        for each of ``users``, in order."""
        online = self.hub.online
        seen = self._last_seen
        missing = [u for u in users if u not in online and u not in seen]
        if not missing:
            reply(self._answer(users))
            return

        def loaded(result: dict[str, int] | StoreError) -> None:
            if not isinstance(result, StoreError):
                for user in missing:
                    # A disconnect since the read is newer than what it found.
                    if user not in self._last_seen:
                        self._remember(user, result.get(user, 0))
            reply(self._answer(users))

        self.hub.commit.add(LastSeen(missing, loaded))

    def _answer(self, users: list[str]) -> list[list[Any]]:
        online = self.hub.online
        seen = self._last_seen
        return [[True, None] if u in online else [False, seen.get(u) or None] for u in users]
