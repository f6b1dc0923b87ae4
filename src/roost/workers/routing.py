"""Who owns a user: a stable hash of the user id, modulo the number of workers.

The owner alone holds the user's live connection and inbox, so no lock and
no database file is ever shared between workers. CRC-32 is stable across
processes and Python versions (unlike ``hash()``, which is salted per process)
and costs well under a microsecond.
"""

from __future__ import annotations

import zlib


def owner_of(user: str, workers: int) -> int:
    return zlib.crc32(user.encode()) % workers
