"""Deadlines without a timer per connection.

Rules:
- Only connections that are *doing* something with a time limit (a handshake
  in progress, a close handshake) are here; an open idle connection never is.
  Dead idle peers are found by kernel TCP keepalive, set once on the listening
  socket and inherited by every accepted one, which costs no user-space CPU.
- Each ``Deadlines`` has one fixed timeout, so insertion order is deadline
  order and a sweep only looks at the front: O(expired), not O(connections).
- One periodic sweep serves them all (``Engine._sweep``), as Redis's
  ``clientsCron`` does.
"""

from __future__ import annotations

from collections import OrderedDict

from roost.engine.table import Conn


class Deadlines:
    __slots__ = ("_entries", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._entries: OrderedDict[int, tuple[Conn, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, conn: Conn, now: float) -> None:
        # Pop first: a reused fd must go to the back, where its deadline belongs.
        self._entries.pop(conn.fd, None)
        self._entries[conn.fd] = (conn, now + self.timeout)

    def discard(self, conn: Conn) -> None:
        entry = self._entries.get(conn.fd)
        if entry is not None and entry[0] is conn:
            del self._entries[conn.fd]

    def expired(self, now: float) -> list[Conn]:
        """Remove and return the connections whose deadline has passed."""
        out = []
        entries = self._entries
        while entries:
            fd, (conn, deadline) = next(iter(entries.items()))
            if deadline > now:
                break
            del entries[fd]
            out.append(conn)
        return out
