"""The worker-to-worker wire format, sans-IO: one packet is one batch.

Rules:
- A packet is a msgpack array of messages; a message is an array whose first
  element is its kind (below). Everything one worker has for another at the
  end of a loop turn goes out as one packet (or a few, under ``MAX_PACKET``).
- File descriptors travel as SCM_RIGHTS ancillary data of the same packet;
  the n-th ``HANDOFF`` message of a packet owns the n-th descriptor.
- Packets are SOCK_SEQPACKET datagrams: the kernel keeps their boundaries and
  ties the descriptors to them, so no framing and no fd bookkeeping is needed
  across reads.
"""

from __future__ import annotations

from typing import Any

import msgspec

MAX_PACKET = 131_072  # bytes; under the default socket send buffer (wmem_default)
MAX_FDS = 250  # descriptors per packet; the kernel's SCM_MAX_FD is 253

# Message kinds and their fields.
HELLO = 0  # (HELLO, worker index): first packet on a link, names the sender
HANDOFF = 1  # (HANDOFF, user, websocket key, bytes already read): adopt the fd
PUT = 2  # (PUT, ref, to, sender, body): store for `to`, answer ACKED or FAILED
ACKED = 3  # (ACKED, ref, id, ts)
FAILED = 4  # (FAILED, ref, code, reason)
RECEIPT = 5  # (RECEIPT, outbox id, user, by, message id, ts): store a receipt
RECEIPT_DONE = 6  # (RECEIPT_DONE, [outbox ids]): stored, forget them
# Groups (roost.groups): to the group's owner, then to each member's owner.
GSEND = 7  # (GSEND, ref, group, sender, body, check member): fan out, answer ACKED or FAILED
GPUT = 8  # (GPUT, ref, group, sender, body, [members]): store for each; ACKED once all are
# Requests that are not sends (presence, group admin, disconnect): any answer.
CALL = 9  # (CALL, ref, method, args): answer REPLY
REPLY = 10  # (REPLY, ref, result)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[list[Any]]).decode


def encode_packet(messages: list[tuple[Any, ...]]) -> bytes:
    return _encode(messages)


def decode_packet(data: bytes) -> list[list[Any]]:
    """Raises ``msgspec.DecodeError`` on a corrupt packet (a bug, never input)."""
    return _decode(data)


def split_batches(messages: list[tuple[Any, ...]], fds: list[int]) -> list[tuple[bytes, list[int]]]:
    """Cut messages into packets of at most ``MAX_PACKET`` bytes and ``MAX_FDS``
    descriptors, keeping order, and pair each packet with its descriptors.

    Almost every batch fits in one packet and is encoded once; a larger one
    is halved until the halves fit.
    """
    data = _encode(messages)
    if len(messages) == 1 or (len(data) <= MAX_PACKET and len(fds) <= MAX_FDS):
        return [(data, fds)]
    mid = len(messages) // 2
    first_fds = sum(1 for message in messages[:mid] if message[0] == HANDOFF)
    return split_batches(messages[:mid], fds[:first_fds]) + split_batches(
        messages[mid:], fds[first_fds:]
    )
