"""Atheris target for roost.proto.handshake: parse_request and check_upgrade.

Run: python fuzzing/fuzz_handshake.py -atheris_runs=1000000 [corpus_dir]

Any exception other than HandshakeError is a bug (the engine would crash on
a peer's bytes), as is consuming more bytes than given.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from roost.errors import HandshakeError
    from roost.proto.handshake import check_upgrade, parse_request


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cap = fdp.ConsumeIntInRange(16, 8192)
    max_body = fdp.ConsumeIntInRange(0, 65536)
    buf = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        result = parse_request(buf, cap, max_body)
    except HandshakeError as exc:
        assert exc.status in (400, 411, 413, 431), exc.status
        return
    if result is None:
        return
    request, used = result
    assert 0 < used <= len(buf)
    assert len(request.body) <= max_body
    try:
        key = check_upgrade(request)
    except HandshakeError as exc:
        assert exc.status in (400, 426), exc.status
        return
    assert isinstance(key, str)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
