"""Who waits for the answer to a send.

A send's answer goes back to its *origin*, which is one of:
- a ``Conn``: the WebSocket client that sent it, answered with an ``ack`` or
  ``error`` frame;
- an ``int``: the peer worker that forwarded it, answered with ``ACKED`` or
  ``FAILED`` over the link, keyed by the ref it gave;
- a ``Waiter``: anything else, told ``acked`` or ``failed``: an HTTP request of
  the backend API (roost.api.backend), a group fan-out or one chunk of it
  (roost.groups).

``Hub.answer`` and ``Hub.answer_error`` dispatch on these three.
"""

from __future__ import annotations


class Waiter:
    __slots__ = ()

    def acked(self, item_id: str, ts: int) -> None:
        """The send is durable: ``item_id`` and ``ts`` are what a client's ack carries."""
        raise NotImplementedError

    def failed(self, code: str, reason: str) -> None:
        """The send was not acked; ``code`` is a protocol error code
        (docs/protocol.md), e.g. ``inbox_full`` or ``internal``."""
        raise NotImplementedError
