"""Atheris target for roost.proto.frames: parse_frames, assemble, parse_close.

Run: python fuzzing/fuzz_frames.py -atheris_runs=1000000 [corpus_dir]

Any exception other than ProtocolError is a bug, as is consuming more bytes
than given or a returned frame that breaks RFC 6455.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from roost.errors import ProtocolError
    from roost.proto.frames import OP_CLOSE, assemble, encode_frame, parse_close, parse_frames


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    masked = fdp.ConsumeBool()
    max_size = fdp.ConsumeIntInRange(0, 1 << 20)
    buf = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        frames, used = parse_frames(buf, max_size, masked=masked)
    except ProtocolError as exc:
        assert exc.code in (1002, 1009), exc.code
        return
    assert 0 <= used <= len(buf)
    # ``used`` is a frame boundary: the consumed bytes alone parse the same.
    assert parse_frames(buf[:used], max_size, masked=masked) == (frames, used)
    for opcode, fin, payload in frames:
        assert len(payload) <= max_size
        if opcode >= OP_CLOSE:
            assert fin and len(payload) <= 125
            if opcode == OP_CLOSE:
                try:
                    parse_close(payload)
                except ProtocolError as exc:
                    assert exc.code in (1002, 1007), exc.code
        # What we parse, we can encode and parse back.
        key = b"\x01\x02\x03\x04" if masked else None
        again = encode_frame(opcode, payload, fin=fin, mask_key=key)
        assert parse_frames(again, max_size, masked=masked) == (
            [(opcode, fin, payload)],
            len(again),
        )
    try:
        messages, partial = assemble(frames, None, max_size)
    except ProtocolError as exc:
        assert exc.code in (1002, 1007, 1009), exc.code
        return
    for opcode, payload in messages:
        if opcode == 1:
            payload.decode("utf-8")
    if partial is not None:
        assert partial[2] == sum(map(len, partial[1])) <= max_size


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
