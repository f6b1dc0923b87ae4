"""roost.proto.frames: RFC 6455 framing, checked against the RFC's own
examples and against python-websockets as an independent implementation."""

from __future__ import annotations

import struct

import pytest
from websockets.exceptions import ProtocolError as WsProtocolError
from websockets.frames import Close as WsClose
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.streams import StreamReader

from roost.errors import ProtocolError, RemoteError, RoostError
from roost.proto.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseCode,
    Opcode,
    apply_mask,
    assemble,
    encode_close,
    encode_frame,
    parse_close,
    parse_frames,
)

KEY = b"\x37\xfa\x21\x3d"  # the mask key of RFC 6455 §5.7's examples
ZERO = b"\x00\x00\x00\x00"
BIG = 1 << 30  # a max_size that never gets in the way
DATA_OPCODES = (OP_CONT, OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)
KNOWN_OPCODES = DATA_OPCODES + CONTROL_OPCODES
UNKNOWN_OPCODES = (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)


def naive_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def raw_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    key: bytes | None = KEY,
    length: int | None = None,
    length_form: int | None = None,
) -> bytes:
    """Build a frame by hand, independently of encode_frame. ``length`` lies
    about the payload size; ``length_form`` forces 7, 16 or 64-bit encoding."""
    n = len(payload) if length is None else length
    form = length_form or (7 if n < 126 else 16 if n < 65536 else 64)
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if key is not None else 0
    if form == 7:
        head = struct.pack("!BB", b0, m | n)
    elif form == 16:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if key is None:
        return head + payload
    return head + key + naive_mask(payload, key)


def ws_parse(data: bytes, *, mask: bool, max_size: int | None = None) -> list[WsFrame]:
    """Parse every frame in ``data`` with websockets' parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        gen = WsFrame.parse(reader.read_exact, mask=mask, max_size=max_size)
        with pytest.raises(StopIteration) as stop:
            next(gen)
        frames.append(stop.value.value)
    return frames


def protocol_error(code: int, *args, **kwargs) -> ProtocolError:
    """Call parse_frames (or the function given) and return the ProtocolError."""
    func = kwargs.pop("func", parse_frames)
    with pytest.raises(ProtocolError) as info:
        func(*args, **kwargs)
    assert info.value.code == code, info.value.reason
    return info.value


# ---- constants ---------------------------------------------------------------


def test_opcodes_match_rfc_6455_section_5_2():
    assert (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) == (0, 1, 2, 8, 9, 10)
    assert [int(o) for o in Opcode] == [0, 1, 2, 8, 9, 10]
    for op in Opcode:
        assert int(op) == int(WsOpcode[op.name])


def test_close_codes_match_rfc_6455_and_protocol_md():
    assert CloseCode.NORMAL == 1000
    assert CloseCode.GOING_AWAY == 1001
    assert CloseCode.PROTOCOL_ERROR == 1002
    assert CloseCode.UNSUPPORTED_DATA == 1003
    assert CloseCode.NO_STATUS == 1005
    assert CloseCode.ABNORMAL == 1006
    assert CloseCode.INVALID_DATA == 1007
    assert CloseCode.POLICY_VIOLATION == 1008
    assert CloseCode.MESSAGE_TOO_BIG == 1009
    assert CloseCode.MANDATORY_EXTENSION == 1010
    assert CloseCode.INTERNAL_ERROR == 1011
    assert CloseCode.REPLACED == 4001
    assert CloseCode.DISCONNECTED == 4003
    assert CloseCode.SLOW_CONSUMER == 4008


def test_protocol_error_is_the_peers_fault():
    exc = protocol_error(1002, raw_frame(OP_TEXT, b"", rsv=0x40), BIG)
    assert isinstance(exc, RemoteError)
    assert isinstance(exc, RoostError)
    assert exc.reason == str(exc)


# ---- apply_mask ----------------------------------------------------------------


def test_apply_mask_rfc_example():
    # RFC 6455 §5.7: a masked "Hello".
    assert apply_mask(b"Hello", KEY) == b"\x7f\x9f\x4d\x51\x58"
    assert apply_mask(b"\x7f\x9f\x4d\x51\x58", KEY) == b"Hello"


@pytest.mark.parametrize("n", [*range(0, 20), 125, 126, 1000, 65537])
def test_apply_mask_matches_bytewise_xor(n):
    data = bytes((i * 7 + 3) & 0xFF for i in range(n))
    for key in (KEY, b"\xff\xff\xff\xff", b"\x00\x00\x00\x01", b"\x80\x00\x00\x00"):
        masked = apply_mask(data, key)
        assert type(masked) is bytes
        assert masked == naive_mask(data, key)
        assert apply_mask(masked, key) == data


def test_apply_mask_keeps_leading_and_trailing_zero_bytes():
    data = b"\x00\x00\x00\x00abc\x00"
    assert apply_mask(data, KEY) == naive_mask(data, KEY)
    assert len(apply_mask(b"\x37\xfa", KEY)) == 2  # masks to b"\0\0"
    assert apply_mask(b"\x37\xfa", KEY) == b"\x00\x00"


def test_apply_mask_zero_key_and_empty_data_copy_to_bytes():
    data = bytearray(b"payload")
    out = apply_mask(data, ZERO)
    assert out == b"payload" and type(out) is bytes
    assert apply_mask(b"", KEY) == b""
    assert type(apply_mask(bytearray(), KEY)) is bytes


def test_apply_mask_accepts_bytearray():
    assert apply_mask(bytearray(b"Hello"), bytearray(KEY)) == b"\x7f\x9f\x4d\x51\x58"


# ---- parse_frames: the RFC's examples --------------------------------------------


def test_rfc_example_single_frame_unmasked_text():
    assert parse_frames(b"\x81\x05\x48\x65\x6c\x6c\x6f", BIG, masked=False) == (
        [(OP_TEXT, True, b"Hello")],
        7,
    )


def test_rfc_example_single_frame_masked_text():
    data = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    assert parse_frames(data, BIG) == ([(OP_TEXT, True, b"Hello")], 11)


def test_rfc_example_fragmented_unmasked_text():
    data = b"\x01\x03\x48\x65\x6c\x80\x02\x6c\x6f"
    frames, used = parse_frames(data, BIG, masked=False)
    assert frames == [(OP_TEXT, False, b"Hel"), (OP_CONT, True, b"lo")]
    assert used == 9
    assert assemble(frames, None, BIG) == ([(OP_TEXT, b"Hello")], None)


def test_rfc_example_ping_and_masked_pong():
    assert parse_frames(b"\x89\x05Hello", BIG, masked=False) == ([(OP_PING, True, b"Hello")], 7)
    pong = b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    assert parse_frames(pong, BIG) == ([(OP_PONG, True, b"Hello")], 11)


def test_rfc_example_256_bytes_and_64_kib_binary():
    payload = bytes(range(256))
    data = b"\x82\x7e\x01\x00" + payload
    assert parse_frames(data, BIG, masked=False) == ([(OP_BINARY, True, payload)], 260)
    payload = b"\xab" * 65536
    data = b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + payload
    assert parse_frames(data, BIG, masked=False) == ([(OP_BINARY, True, payload)], 65546)


# ---- parse_frames: every length encoding ------------------------------------------

LENGTHS = [
    (0, 2),
    (1, 2),
    (125, 2),  # the largest 7-bit length
    (126, 4),  # the smallest 16-bit length
    (1000, 4),
    (65535, 4),  # the largest 16-bit length
    (65536, 10),  # the smallest 64-bit length
    (200_000, 10),
]


@pytest.mark.parametrize(("n", "header"), LENGTHS)
@pytest.mark.parametrize("masked", [True, False])
def test_each_length_encoding(n, header, masked):
    payload = bytes((i * 31) & 0xFF for i in range(n))
    wire = raw_frame(OP_BINARY, payload, key=KEY if masked else None)
    assert len(wire) == header + (4 if masked else 0) + n
    assert parse_frames(wire, BIG, masked=masked) == ([(OP_BINARY, True, payload)], len(wire))
    assert encode_frame(OP_BINARY, payload, mask_key=KEY if masked else None) == wire


@pytest.mark.parametrize(("n", "header"), LENGTHS)
def test_each_length_encoding_header_bytes(n, header):
    wire = encode_frame(OP_BINARY, b"x" * n)
    if header == 2:
        assert wire[:2] == bytes((0x82, n))
    elif header == 4:
        assert wire[:4] == bytes((0x82, 126)) + n.to_bytes(2, "big")
    else:
        assert wire[:10] == bytes((0x82, 127)) + n.to_bytes(8, "big")
    assert wire[header:] == b"x" * n


def test_masked_frame_with_zero_key_carries_the_payload_as_is():
    wire = encode_frame(OP_TEXT, b"plain", mask_key=ZERO)
    assert wire == b"\x81\x85\x00\x00\x00\x00plain"
    assert parse_frames(wire, BIG) == ([(OP_TEXT, True, b"plain")], len(wire))


def test_payload_of_a_bytearray_buffer_is_bytes():
    buf = bytearray(raw_frame(OP_TEXT, b"abc") + raw_frame(OP_TEXT, b"def", key=ZERO))
    frames, used = parse_frames(buf, BIG)
    assert frames == [(OP_TEXT, True, b"abc"), (OP_TEXT, True, b"def")]
    assert all(type(p) is bytes for _, _, p in frames)
    assert used == len(buf)
    unmasked = bytearray(raw_frame(OP_TEXT, b"xyz", key=None))
    [(_, _, payload)], _ = parse_frames(unmasked, BIG, masked=False)
    assert type(payload) is bytes and payload == b"xyz"


# ---- parse_frames: masking rules (§5.1) ------------------------------------------


@pytest.mark.parametrize("opcode", KNOWN_OPCODES)
def test_server_side_rejects_unmasked_frames(opcode):
    exc = protocol_error(1002, raw_frame(opcode, b"", key=None), BIG)
    assert "not masked" in exc.reason


@pytest.mark.parametrize("opcode", KNOWN_OPCODES)
def test_client_side_rejects_masked_frames(opcode):
    exc = protocol_error(1002, raw_frame(opcode, b"", key=ZERO), BIG, masked=False)
    assert "masked" in exc.reason


def test_masking_is_checked_on_the_second_byte_before_the_rest_arrives():
    # A 64-bit length header, unmasked, with nothing after the second byte.
    protocol_error(1002, raw_frame(OP_TEXT, b"", key=None), BIG)
    protocol_error(1002, b"\x81\x00", BIG)
    protocol_error(1002, b"\x81\x80", BIG, masked=False)


def test_masked_frame_waits_for_its_key():
    wire = raw_frame(OP_TEXT, b"")
    assert len(wire) == 6
    for i in range(6):
        assert parse_frames(wire[:i], BIG) == ([], 0)
    assert parse_frames(wire, BIG) == ([(OP_TEXT, True, b"")], 6)


# ---- parse_frames: partial input ---------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 5, 125, 126, 300, 65535])
@pytest.mark.parametrize("masked", [True, False])
def test_a_frame_split_anywhere_yields_nothing_until_complete(n, masked):
    payload = bytes(i & 0xFF for i in range(n))
    wire = raw_frame(OP_BINARY, payload, key=KEY if masked else None)
    cuts = range(len(wire)) if len(wire) < 2000 else [*range(20), *range(len(wire) - 20, len(wire))]
    for i in cuts:
        assert parse_frames(wire[:i], BIG, masked=masked) == ([], 0), i
    assert parse_frames(wire, BIG, masked=masked) == ([(OP_BINARY, True, payload)], len(wire))


def test_64_bit_frame_split_in_its_header_and_payload():
    payload = b"\x5a" * 65536
    wire = raw_frame(OP_BINARY, payload)
    for i in [*range(15), 1000, 65545, len(wire) - 1]:
        assert parse_frames(wire[:i], BIG) == ([], 0), i
    assert parse_frames(wire, BIG) == ([(OP_BINARY, True, payload)], len(wire))


def test_two_frames_split_at_every_byte():
    first = raw_frame(OP_TEXT, b"first", fin=False)
    second = raw_frame(OP_CONT, b"x" * 130)
    wire = first + second
    for i in range(len(wire) + 1):
        frames, used = parse_frames(wire[:i], BIG)
        if i < len(first):
            assert (frames, used) == ([], 0), i
        elif i < len(wire):
            assert (frames, used) == ([(OP_TEXT, False, b"first")], len(first)), i
        else:
            assert used == len(wire)
            assert frames == [(OP_TEXT, False, b"first"), (OP_CONT, True, b"x" * 130)]


def test_trailing_partial_frame_is_left_for_the_next_read():
    wire = raw_frame(OP_TEXT, b"one") + raw_frame(OP_TEXT, b"two")
    frames, used = parse_frames(wire[:-1], BIG)
    assert frames == [(OP_TEXT, True, b"one")]
    assert used == len(raw_frame(OP_TEXT, b"one"))


def test_stream_fed_in_every_chunk_size_reassembles_the_same():
    """Feed a stream the way the engine does: leftover + each new read."""
    messages = [b"", b"a", "é€😀".encode(), b"y" * 126, b"z" * 700]
    wire = b"".join(encode_frame(OP_TEXT, m, mask_key=KEY) for m in messages)
    wire += encode_frame(OP_TEXT, b"frag-", fin=False, mask_key=KEY)
    wire += encode_frame(OP_PING, b"ping", mask_key=ZERO)
    wire += encode_frame(OP_CONT, b"ment", mask_key=KEY)
    expected = [(OP_TEXT, m) for m in messages] + [(OP_PING, b"ping"), (OP_TEXT, b"frag-ment")]
    for size in [*range(1, 20), 127, 500, len(wire)]:
        out, buf, partial = [], b"", None
        for start in range(0, len(wire), size):
            buf += wire[start : start + size]
            frames, used = parse_frames(buf, BIG)
            assert 0 <= used <= len(buf)
            buf = buf[used:]
            msgs, partial = assemble(frames, partial, BIG)
            out.extend(msgs)
        assert buf == b"" and partial is None
        assert out == expected, size


def test_many_frames_in_one_buffer():
    frames = []
    for i in range(1000):
        opcode = (OP_TEXT, OP_BINARY, OP_PING, OP_PONG)[i % 4]
        size = i % 126 if opcode >= OP_CLOSE else i % 300
        frames.append((opcode, True, bytes([i & 0xFF]) * size))
    wire = b"".join(
        raw_frame(op, p, key=bytes((i % 256, 1, 2, 3))) for i, (op, _, p) in enumerate(frames)
    )
    assert parse_frames(wire, BIG) == (frames, len(wire))


def test_empty_and_one_byte_input():
    assert parse_frames(b"", BIG) == ([], 0)
    assert parse_frames(b"\x81", BIG) == ([], 0)
    assert parse_frames(b"\x81", BIG, masked=False) == ([], 0)


# ---- parse_frames: the size limit (1009) -------------------------------------------


@pytest.mark.parametrize("n", [10, 125, 126, 65535, 65536, 1 << 20, (1 << 63) - 1])
def test_1009_as_soon_as_the_header_is_readable(n):
    """Only the header is given: no mask key, no payload. The limit already
    applies, so a peer cannot make us buffer a frame we will refuse."""
    max_size = n - 1
    wire = raw_frame(OP_BINARY, b"", length=n)[: -4 or None]  # header only, no key
    header_len = 2 if n < 126 else 4 if n < 65536 else 10
    assert len(wire) == header_len
    for i in range(header_len):
        assert parse_frames(wire[:i], max_size) == ([], 0)
    exc = protocol_error(1009, wire, max_size)
    assert str(n) in exc.reason and str(max_size) in exc.reason
    # The same on the client side (unmasked frames).
    protocol_error(1009, raw_frame(OP_BINARY, b"", key=None, length=n), max_size, masked=False)


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_frame_exactly_at_the_limit_is_accepted(n):
    payload = b"q" * n
    wire = raw_frame(OP_TEXT, payload)
    assert parse_frames(wire, n) == ([(OP_TEXT, True, payload)], len(wire))
    if n:
        protocol_error(1009, wire, n - 1)


def test_1009_on_a_later_frame_of_the_buffer():
    wire = raw_frame(OP_TEXT, b"ok") + raw_frame(OP_TEXT, b"too long")
    protocol_error(1009, wire, 5)


def test_limit_is_checked_on_the_declared_length_of_a_non_minimal_encoding():
    wire = raw_frame(OP_TEXT, b"", length=100, length_form=64)[:10]
    protocol_error(1009, wire, 99)


# ---- parse_frames: header violations (1002) ----------------------------------------


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10, 0x70])
@pytest.mark.parametrize("masked", [True, False])
def test_reserved_bits(rsv, masked):
    wire = raw_frame(OP_TEXT, b"hi", rsv=rsv, key=KEY if masked else None)
    exc = protocol_error(1002, wire, BIG, masked=masked)
    assert "reserved" in exc.reason
    # Raised from the first two bytes alone.
    protocol_error(1002, wire[:2], BIG, masked=masked)


@pytest.mark.parametrize("opcode", UNKNOWN_OPCODES)
def test_unknown_opcodes(opcode):
    exc = protocol_error(1002, raw_frame(opcode, b""), BIG)
    assert str(opcode) in exc.reason
    protocol_error(1002, raw_frame(opcode, b"", fin=False)[:2], BIG)


@pytest.mark.parametrize("opcode", KNOWN_OPCODES)
def test_known_opcodes_parse(opcode):
    assert parse_frames(raw_frame(opcode, b"p"), BIG)[0] == [(opcode, True, b"p")]


@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
def test_fragmented_control_frames(opcode):
    exc = protocol_error(1002, raw_frame(opcode, b"x", fin=False), BIG)
    assert "fragmented" in exc.reason


@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
def test_control_frame_of_125_bytes_is_fine(opcode):
    payload = b"c" * 125
    assert parse_frames(raw_frame(opcode, payload), BIG) == (
        [(opcode, True, payload)],
        2 + 4 + 125,
    )


@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
@pytest.mark.parametrize("n", [126, 127, 65535, 65536])
def test_control_frame_over_125_bytes(opcode, n):
    wire = raw_frame(opcode, b"c" * n)
    exc = protocol_error(1002, wire, BIG)
    assert "control" in exc.reason
    # Raised from the first two bytes, before the extended length arrives.
    protocol_error(1002, wire[:2], BIG)


@pytest.mark.parametrize("opcode", CONTROL_OPCODES)
def test_control_frame_with_a_non_minimal_16_bit_length_is_rejected(opcode):
    # §5.5: all control frames MUST have a payload length of 125 bytes or less
    # and MUST NOT be fragmented; a length field of 126 is a violation.
    protocol_error(1002, raw_frame(opcode, b"c", length_form=16), BIG)


@pytest.mark.parametrize("masked", [True, False])
def test_64_bit_length_with_top_bit_set(masked):
    for length in (1 << 63, (1 << 64) - 1):
        wire = raw_frame(OP_BINARY, b"", key=KEY if masked else None, length=length)
        exc = protocol_error(1002, wire, 1 << 70, masked=masked)
        assert "64-bit" in exc.reason
        # Also when the limit would have refused it: the top bit is checked first.
        protocol_error(1002, wire[:10], 10, masked=masked)


def test_64_bit_length_just_below_the_top_bit_is_only_too_big():
    wire = raw_frame(OP_BINARY, b"", length=(1 << 63) - 1)[:10]
    protocol_error(1009, wire, BIG)


def test_error_in_a_later_frame_raises_even_after_good_frames():
    wire = raw_frame(OP_TEXT, b"good") + raw_frame(OP_TEXT, b"bad", rsv=0x40)
    protocol_error(1002, wire, BIG)


# ---- assemble -----------------------------------------------------------------------


def test_single_frames_pass_through():
    frames = [(OP_TEXT, True, b"t"), (OP_BINARY, True, b"\xff"), (OP_PING, True, b"p")]
    frames += [(OP_PONG, True, b""), (OP_CLOSE, True, b"\x03\xe8")]
    assert assemble(frames, None, BIG) == ([(op, p) for op, _, p in frames], None)


def test_no_frames():
    assert assemble([], None, BIG) == ([], None)
    partial = (OP_TEXT, [b"a"], 1)
    assert assemble([], partial, BIG) == ([], partial)


def test_fragments_reassembled():
    frames = [(OP_TEXT, False, b"He"), (OP_CONT, False, b"l"), (OP_CONT, True, b"lo")]
    assert assemble(frames, None, BIG) == ([(OP_TEXT, b"Hello")], None)
    frames = [(OP_BINARY, False, b"\x00"), (OP_CONT, True, b"\xff")]
    assert assemble(frames, None, BIG) == ([(OP_BINARY, b"\x00\xff")], None)


def test_fragments_across_calls_carry_the_partial_state():
    messages, partial = assemble([(OP_TEXT, False, b"ab")], None, BIG)
    assert messages == [] and partial == (OP_TEXT, [b"ab"], 2)
    messages, partial = assemble([(OP_CONT, False, b"cde")], partial, BIG)
    assert messages == [] and partial is not None
    assert partial[0] == OP_TEXT and b"".join(partial[1]) == b"abcde" and partial[2] == 5
    messages, partial = assemble([(OP_CONT, True, b"f"), (OP_TEXT, True, b"g")], partial, BIG)
    assert messages == [(OP_TEXT, b"abcdef"), (OP_TEXT, b"g")] and partial is None


def test_empty_fragments():
    frames = [(OP_TEXT, False, b""), (OP_CONT, False, b""), (OP_CONT, True, b"")]
    assert assemble(frames, None, BIG) == ([(OP_TEXT, b"")], None)


def test_control_frames_interleaved_between_fragments():
    frames = [
        (OP_TEXT, False, b"a"),
        (OP_PING, True, b"p1"),
        (OP_CONT, False, b"b"),
        (OP_PONG, True, b""),
        (OP_PING, True, b"p2"),
        (OP_CONT, True, b"c"),
        (OP_PING, True, b"p3"),
    ]
    assert assemble(frames, None, BIG) == (
        [(OP_PING, b"p1"), (OP_PONG, b""), (OP_PING, b"p2"), (OP_TEXT, b"abc"), (OP_PING, b"p3")],
        None,
    )


def test_close_frame_between_fragments_is_returned_and_the_partial_kept():
    frames = [(OP_TEXT, False, b"a"), (OP_CLOSE, True, b"\x03\xe8")]
    messages, partial = assemble(frames, None, BIG)
    assert messages == [(OP_CLOSE, b"\x03\xe8")]
    assert partial == (OP_TEXT, [b"a"], 1)


def test_control_frames_are_not_checked_for_utf8():
    frames = [(OP_PING, True, b"\xff"), (OP_PONG, True, b"\xc0")]
    assert assemble(frames, None, BIG)[0] == [(OP_PING, b"\xff"), (OP_PONG, b"\xc0")]


def test_control_frames_do_not_count_towards_the_message_size():
    frames = [(OP_TEXT, False, b"ab"), (OP_PING, True, b"x" * 125), (OP_CONT, True, b"cd")]
    assert assemble(frames, None, 4)[0] == [(OP_PING, b"x" * 125), (OP_TEXT, b"abcd")]


def test_continuation_without_a_start():
    exc = protocol_error(1002, [(OP_CONT, True, b"x")], None, BIG, func=assemble)
    assert "continuation" in exc.reason
    protocol_error(1002, [(OP_CONT, False, b"x")], None, BIG, func=assemble)
    # After a message that was complete.
    frames = [(OP_TEXT, False, b"a"), (OP_CONT, True, b"b"), (OP_CONT, True, b"c")]
    protocol_error(1002, frames, None, BIG, func=assemble)


@pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("fin", [True, False])
def test_new_data_frame_inside_a_fragmented_message(second, fin):
    frames = [(OP_TEXT, False, b"a"), (second, fin, b"b")]
    exc = protocol_error(1002, frames, None, BIG, func=assemble)
    assert "inside" in exc.reason
    # Across calls too.
    protocol_error(1002, [(second, fin, b"b")], (OP_BINARY, [b"a"], 1), BIG, func=assemble)


def test_reassembled_size_exactly_at_the_limit():
    frames = [(OP_TEXT, False, b"aaa"), (OP_CONT, False, b"bbb"), (OP_CONT, True, b"cccc")]
    assert assemble(frames, None, 10) == ([(OP_TEXT, b"aaabbbcccc")], None)


def test_reassembled_size_over_the_limit():
    frames = [(OP_TEXT, False, b"aaa"), (OP_CONT, False, b"bbb"), (OP_CONT, True, b"ccccc")]
    exc = protocol_error(1009, frames, None, 10, func=assemble)
    assert "10" in exc.reason
    # Raised by the fragment that crosses the limit, before the message ends.
    frames = [(OP_BINARY, False, b"x" * 6), (OP_CONT, False, b"x" * 5)]
    protocol_error(1009, frames, None, 10, func=assemble)
    # And across calls.
    protocol_error(1009, [(OP_CONT, False, b"x")], (OP_TEXT, [b"y" * 10], 10), 10, func=assemble)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b"\xc0\xaf",  # overlong "/"
        b"\xed\xa0\x80",  # a UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"ok\xe2\x82",  # a truncated euro sign at the end
        b"\x80",  # a lone continuation byte
    ],
)
def test_invalid_utf8_text_message_is_1007(payload):
    exc = protocol_error(1007, [(OP_TEXT, True, payload)], None, BIG, func=assemble)
    assert "UTF-8" in exc.reason


def test_invalid_utf8_split_across_fragments_is_1007():
    frames = [(OP_TEXT, False, b"ok"), (OP_CONT, True, b"\xe2\x82")]
    protocol_error(1007, frames, None, BIG, func=assemble)


def test_invalid_utf8_binary_message_is_fine():
    assert assemble([(OP_BINARY, True, b"\xff\xfe")], None, BIG)[0] == [(OP_BINARY, b"\xff\xfe")]


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_multibyte_utf8_split_inside_a_character_across_fragments(char):
    raw = ("a" + char + "b").encode()
    for cut in range(1, len(raw)):
        frames = [(OP_TEXT, False, raw[:cut]), (OP_CONT, True, raw[cut:])]
        assert assemble(frames, None, BIG) == ([(OP_TEXT, raw)], None)
    # One byte per fragment, over several calls.
    partial = None
    for i, byte in enumerate(raw):
        first = OP_TEXT if i == 0 else OP_CONT
        messages, partial = assemble([(first, i == len(raw) - 1, bytes([byte]))], partial, BIG)
    assert messages == [(OP_TEXT, raw)] and partial is None


# ---- encode_frame -------------------------------------------------------------------


@pytest.mark.parametrize("opcode", KNOWN_OPCODES)
@pytest.mark.parametrize("fin", [True, False])
def test_encode_frame_first_byte(opcode, fin):
    wire = encode_frame(opcode, b"", fin=fin)
    assert wire == bytes(((0x80 if fin else 0) | opcode, 0))


def test_encode_frame_default_is_unmasked_and_final():
    assert encode_frame(OP_TEXT, b"Hello") == b"\x81\x05Hello"
    assert encode_frame(OP_TEXT, b"Hello", mask_key=KEY) == (
        b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    )


def test_encode_frame_round_trips_through_parse_frames():
    for n in (0, 125, 126, 65535, 65536):
        payload = bytes(i & 0xFF for i in range(n))
        for fin in (True, False):
            server = encode_frame(OP_BINARY, payload, fin=fin)
            assert parse_frames(server, BIG, masked=False) == (
                [(OP_BINARY, fin, payload)],
                len(server),
            )
            client = encode_frame(OP_BINARY, payload, fin=fin, mask_key=KEY)
            assert parse_frames(client, BIG) == ([(OP_BINARY, fin, payload)], len(client))


# ---- encode_close / parse_close ------------------------------------------------------


def test_encode_close():
    assert encode_close(1000) == b"\x03\xe8"
    assert encode_close(CloseCode.SLOW_CONSUMER, "slow") == b"\x0f\xa8slow"
    assert encode_close(4001, "é") == b"\x0f\xa1\xc3\xa9"


@pytest.mark.parametrize(
    "reason",
    [
        "x" * 123,
        "x" * 124,
        "x" * 1000,
        "é" * 100,  # 2-byte characters: 123 bytes cut one in half
        "€" * 100,  # 3-byte characters: 123 = 41 * 3, no cut
        "a€" * 60,
        "😀" * 40,  # 4-byte characters
        "ab😀" * 40,
        "a" * 122 + "😀",
        "a" * 121 + "😀",
        "a" * 120 + "😀",
        "a" * 119 + "😀",
    ],
)
def test_encode_close_cuts_a_long_reason_to_a_valid_payload(reason):
    payload = encode_close(1001, reason)
    assert len(payload) <= 125
    raw = payload[2:]
    text = raw.decode("utf-8")  # valid UTF-8: no broken tail
    assert reason.startswith(text)
    # The longest prefix of whole characters that fits: at most 3 bytes lost.
    assert len(raw) > 123 - 4 or raw == reason.encode()
    if text != reason:
        assert len((text + reason[len(text)]).encode()) > 123
    assert parse_close(payload) == (1001, text)
    # An independent parser agrees.
    assert WsClose.parse(payload) == WsClose(1001, text)


def test_encode_close_keeps_a_reason_that_fits():
    reason = "é" * 61 + "x"  # 123 bytes exactly
    assert encode_close(1000, reason)[2:] == reason.encode()


def test_parse_close_empty_is_no_status():
    assert parse_close(b"") == (1005, "")
    assert parse_close(b"")[0] == CloseCode.NO_STATUS


def test_parse_close_one_byte():
    exc = protocol_error(1002, b"\x03", func=parse_close)
    assert "1 byte" in exc.reason


@pytest.mark.parametrize(
    "code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
)
def test_parse_close_forbidden_codes(code):
    exc = protocol_error(1002, code.to_bytes(2, "big") + b"reason", func=parse_close)
    assert str(code) in exc.reason


@pytest.mark.parametrize(
    "code",
    [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4001, 4999],
)
def test_parse_close_allowed_codes(code):
    assert parse_close(code.to_bytes(2, "big")) == (code, "")
    assert parse_close(code.to_bytes(2, "big") + "bye 👋".encode()) == (code, "bye 👋")


def test_parse_close_agrees_with_websockets_on_every_code():
    for code in range(65536):
        payload = code.to_bytes(2, "big")
        try:
            WsClose.parse(payload)
        except WsProtocolError:
            with pytest.raises(ProtocolError) as info:
                parse_close(payload)
            assert info.value.code == 1002
        else:
            assert parse_close(payload) == (code, "")


@pytest.mark.parametrize("reason", [b"\xff", b"ok\xe2\x82", b"\xed\xa0\x80"])
def test_parse_close_bad_utf8_reason(reason):
    exc = protocol_error(1007, b"\x03\xe8" + reason, func=parse_close)
    assert "UTF-8" in exc.reason


def test_parse_close_checks_the_code_before_the_reason():
    protocol_error(1002, b"\x03\xed\xff", func=parse_close)  # 1005 with a bad reason


def test_close_round_trip_inside_a_frame():
    wire = encode_frame(OP_CLOSE, encode_close(CloseCode.GOING_AWAY, "bye"), mask_key=KEY)
    [(opcode, fin, payload)], _ = parse_frames(wire, BIG)
    assert (opcode, fin) == (OP_CLOSE, True)
    assert parse_close(payload) == (1001, "bye")


# ---- cross-checks with python-websockets -------------------------------------------

WS_CASES = [
    (WsOpcode.TEXT, "héllo €😀".encode(), True),
    (WsOpcode.TEXT, b"", True),
    (WsOpcode.BINARY, bytes(range(256)) * 4, True),
    (WsOpcode.BINARY, b"\x00" * 65535, True),
    (WsOpcode.BINARY, b"\x01" * 65536, True),
    (WsOpcode.TEXT, b"first part", False),
    (WsOpcode.CONT, b"middle", False),
    (WsOpcode.CONT, b"end", True),
    (WsOpcode.PING, b"p" * 125, True),
    (WsOpcode.PONG, b"", True),
    (WsOpcode.CLOSE, WsClose(1000, "bye").serialize(), True),
]


@pytest.mark.parametrize(("opcode", "data", "fin"), WS_CASES)
def test_websockets_masked_frames_parse_with_ours(opcode, data, fin):
    wire = WsFrame(opcode, data, fin).serialize(mask=True)
    assert parse_frames(wire, BIG) == ([(int(opcode), fin, data)], len(wire))
    with pytest.raises(ProtocolError):
        parse_frames(wire, BIG, masked=False)


@pytest.mark.parametrize(("opcode", "data", "fin"), WS_CASES)
def test_websockets_unmasked_frames_parse_with_ours_on_the_client_side(opcode, data, fin):
    wire = WsFrame(opcode, data, fin).serialize(mask=False)
    assert parse_frames(wire, BIG, masked=False) == ([(int(opcode), fin, data)], len(wire))
    with pytest.raises(ProtocolError):
        parse_frames(wire, BIG)


@pytest.mark.parametrize(("opcode", "data", "fin"), WS_CASES)
@pytest.mark.parametrize("key", [None, KEY, ZERO])
def test_our_frames_parse_with_websockets(opcode, data, fin, key):
    wire = encode_frame(int(opcode), data, fin=fin, mask_key=key)
    [frame] = ws_parse(wire, mask=key is not None)
    assert (frame.opcode, frame.data, frame.fin) == (opcode, data, fin)
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)


def test_a_websockets_stream_reassembles_with_ours():
    wire = b"".join(WsFrame(op, data, fin).serialize(mask=True) for op, data, fin in WS_CASES)
    frames, used = parse_frames(wire, BIG)
    assert used == len(wire)
    messages, partial = assemble(frames, None, BIG)
    assert partial is None
    assert messages == [
        (OP_TEXT, "héllo €😀".encode()),
        (OP_TEXT, b""),
        (OP_BINARY, bytes(range(256)) * 4),
        (OP_BINARY, b"\x00" * 65535),
        (OP_BINARY, b"\x01" * 65536),
        (OP_TEXT, b"first partmiddleend"),
        (OP_PING, b"p" * 125),
        (OP_PONG, b""),
        (OP_CLOSE, b"\x03\xe8bye"),
    ]


@pytest.mark.parametrize(
    "wire",
    [
        raw_frame(OP_TEXT, b"x", rsv=0x40),
        raw_frame(3, b""),
        raw_frame(OP_PING, b"x", fin=False),
        raw_frame(OP_PING, b"x" * 126),
    ],
)
def test_frames_websockets_rejects_we_reject(wire):
    with pytest.raises(WsProtocolError):
        ws_parse(wire, mask=True)
    protocol_error(1002, wire, BIG)
