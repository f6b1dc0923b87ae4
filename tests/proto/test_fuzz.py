"""Property tests for the sans-IO parsers: whatever a peer sends, they raise
only the documented exception, never consume more than given, and what we
encode comes back unchanged.

``deadline=None`` everywhere: no test here depends on timing.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame as WsFrame
from websockets.streams import StreamReader

from roost.errors import HandshakeError, ProtocolError, RequestError
from roost.proto.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    apply_mask,
    assemble,
    encode_close,
    encode_frame,
    parse_close,
    parse_frames,
)
from roost.proto.handshake import Request, check_upgrade, parse_request
from roost.proto.messages import Recv, Send, decode_client_op

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

KNOWN = (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG)
keys = st.binary(min_size=4, max_size=4)
max_sizes = st.sampled_from([0, 1, 125, 126, 65535, 65536, 1 << 20])


def frame_size(payload_len: int, masked: bool) -> int:
    header = 2 if payload_len < 126 else 4 if payload_len < 65536 else 10
    return header + (4 if masked else 0) + payload_len


# ---- frames: arbitrary input -----------------------------------------------------------


def frame_like() -> st.SearchStrategy[bytes]:
    """Bytes that often look like frame headers, so the fuzzer gets past byte 2."""
    head = st.tuples(
        st.sampled_from([0x80, 0x00]),
        st.sampled_from([0, 0, 0, 0x10, 0x20, 0x40]),
        st.sampled_from([*KNOWN, 3, 0xB, 0xF]),
        st.sampled_from([0x80, 0x00]),
        st.sampled_from([0, 1, 5, 125, 126, 127]),
    ).map(lambda t: bytes((t[0] | t[1] | t[2], t[3] | t[4])))
    chunk = st.one_of(head, st.binary(max_size=12))
    return st.lists(chunk, max_size=12).map(b"".join)


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=300), frame_like()), max_size=max_sizes, masked=st.booleans()
)
def test_parse_frames_on_arbitrary_bytes(data, max_size, masked):
    try:
        frames, used = parse_frames(data, max_size, masked=masked)
    except ProtocolError as exc:
        assert exc.code in (1002, 1009)
        return
    assert 0 <= used <= len(data)
    # Each frame took at least its minimal encoding (more for a non-minimal length).
    assert used >= sum(frame_size(len(p), masked) for _, _, p in frames)
    for opcode, _fin, payload in frames:
        assert opcode in KNOWN
        assert len(payload) <= max_size
        assert type(payload) is bytes
        if opcode >= OP_CLOSE:
            assert _fin and len(payload) <= 125
    # ``used`` is a frame boundary: the consumed bytes alone parse the same.
    assert parse_frames(data[:used], max_size, masked=masked) == (frames, used)
    # What is left is never a complete frame.
    try:
        assert parse_frames(data[used:], max_size, masked=masked) == ([], 0)
    except ProtocolError:  # pragma: no cover - the first call would have raised
        raise AssertionError("a frame left unparsed was invalid") from None


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), frame_like()), max_size=max_sizes)
def test_parse_then_assemble_on_arbitrary_bytes(data, max_size):
    try:
        frames, used = parse_frames(data, max_size, masked=False)
        messages, partial = assemble(frames, None, max_size)
    except ProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)
        return
    assert used <= len(data)
    for opcode, payload in messages:
        assert opcode in (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG)
        if opcode == OP_TEXT:
            payload.decode("utf-8")
    if partial is not None:
        assert partial[0] in (OP_TEXT, OP_BINARY)
        assert partial[2] == sum(map(len, partial[1])) <= max_size


raw_frames = st.lists(
    st.tuples(st.sampled_from(KNOWN), st.booleans(), st.binary(max_size=20)), max_size=20
)


@FUZZ
@given(frames=raw_frames, max_size=st.sampled_from([0, 5, 20, 100]), start=st.booleans())
def test_assemble_on_arbitrary_frame_sequences(frames, max_size, start):
    partial = (OP_TEXT, [b"x"], 1) if start else None
    try:
        messages, partial = assemble(frames, partial, max_size)
    except ProtocolError as exc:
        assert exc.code in (1002, 1007, 1009)
        return
    controls = [(o, p) for o, _, p in frames if o >= OP_CLOSE]
    assert [m for m in messages if m[0] >= OP_CLOSE] == controls


# ---- frames: round trips -------------------------------------------------------------


@st.composite
def conversations(draw):
    """Messages (text or binary, fragmented anywhere, control frames between
    fragments) and their wire encoding with random masks."""
    messages = []
    wire = []
    masked = draw(st.booleans())
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            payload = draw(st.text(max_size=60)).encode()
            opcode = OP_TEXT
        else:
            payload = draw(st.binary(max_size=300))
            opcode = OP_BINARY
        cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        for i, piece in enumerate(pieces):
            key = draw(keys) if masked else None
            wire.append(
                encode_frame(
                    opcode if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1, mask_key=key
                )
            )
            if i < len(pieces) - 1 and draw(st.integers(0, 3)) == 0:
                # Between two fragments: delivered before the data message.
                control = draw(st.sampled_from([OP_PING, OP_PONG]))
                body = draw(st.binary(max_size=125))
                wire.append(encode_frame(control, body, mask_key=draw(keys) if masked else None))
                messages.append((control, body))
        messages.append((opcode, payload))
    return masked, b"".join(wire), messages


@FUZZ
@given(conv=conversations(), chunk=st.integers(1, 400))
def test_encode_parse_assemble_round_trip(conv, chunk):
    masked, wire, expected = conv
    out, buf, partial = [], b"", None
    for start in range(0, len(wire), chunk):
        buf += wire[start : start + chunk]
        frames, used = parse_frames(buf, 1 << 20, masked=masked)
        assert used <= len(buf)
        buf = buf[used:]
        messages, partial = assemble(frames, partial, 1 << 20)
        out.extend(messages)
    assert buf == b"" and partial is None
    assert out == expected


@FUZZ
@given(
    opcode=st.sampled_from(KNOWN),
    payload=st.binary(max_size=70000),
    fin=st.booleans(),
    key=st.none() | keys,
)
def test_encode_frame_parses_back_with_ours_and_websockets(opcode, payload, fin, key):
    if opcode >= OP_CLOSE:
        payload, fin = payload[:125], True
    wire = encode_frame(opcode, payload, fin=fin, mask_key=key)
    assert parse_frames(wire, 1 << 20, masked=key is not None) == (
        [(opcode, fin, payload)],
        len(wire),
    )
    reader = StreamReader()
    reader.feed_data(wire)
    gen = WsFrame.parse(reader.read_exact, mask=key is not None)
    try:
        next(gen)
    except StopIteration as stop:
        frame = stop.value
    else:  # pragma: no cover - websockets wanted more bytes
        raise AssertionError("websockets found the frame incomplete")
    assert (int(frame.opcode), frame.fin, frame.data) == (opcode, fin, payload)
    assert not reader.buffer


@FUZZ
@given(
    payload=st.binary(max_size=300),
    fin=st.booleans(),
    opcode=st.sampled_from([OP_TEXT, OP_BINARY, OP_CONT]),
)
def test_websockets_frames_parse_with_ours(payload, fin, opcode):
    from websockets.frames import Opcode

    wire = WsFrame(Opcode(opcode), payload, fin).serialize(mask=True)
    assert parse_frames(wire, 1 << 20) == ([(opcode, fin, payload)], len(wire))


@FUZZ
@given(data=st.binary(max_size=200), key=keys)
def test_apply_mask_is_an_involution_and_bytewise(data, key):
    masked = apply_mask(data, key)
    assert apply_mask(masked, key) == data
    assert masked == bytes(b ^ key[i % 4] for i, b in enumerate(data))


# ---- close payloads --------------------------------------------------------------------


@FUZZ
@given(
    code=st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011])
    | st.integers(3000, 4999),
    reason=st.text(max_size=200),
)
def test_encode_close_parse_close_round_trip(code, reason):
    payload = encode_close(code, reason)
    assert len(payload) <= 125
    parsed_code, parsed_reason = parse_close(payload)
    assert parsed_code == code
    assert reason.startswith(parsed_reason)
    if len(reason.encode()) <= 123:
        assert parsed_reason == reason


@FUZZ
@given(payload=st.binary(max_size=130))
def test_parse_close_on_arbitrary_payloads(payload):
    try:
        code, reason = parse_close(payload)
    except ProtocolError as exc:
        assert exc.code in (1002, 1007)
        return
    assert code == 1005 if not payload else 1000 <= code <= 4999
    assert isinstance(reason, str)


# ---- handshake ------------------------------------------------------------------------


def request_like() -> st.SearchStrategy[bytes]:
    """Bytes shaped like an HTTP request head, with hostile pieces mixed in."""
    token = st.sampled_from([b"GET", b"POST", b"G T", b"", b"get", b"X(Y"])
    target = st.sampled_from(
        [b"/ws", b"/ws?token=a&b", b"//[", b"http://[::1/", b"", b"/%zz?%ff=%", b"*", b"/\xff"]
    )
    version = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"http/1.1", b""])
    name = st.sampled_from(
        [
            b"Host",
            b"Content-Length",
            b"Transfer-Encoding",
            b"Sec-WebSocket-Key",
            b"Upgrade",
            b"Connection",
            b"Sec-WebSocket-Version",
            b" Folded",
            b"Bad Name",
            b"",
        ]
    )
    value = st.one_of(
        st.sampled_from(
            [
                b"websocket",
                b"Upgrade",
                b"13",
                b"dGhlIHNhbXBsZSBub25jZQ==",
                b"\xe9" * 24,
                b"5",
                b"\xb2",
                b"1" * 5000,
                b"-1",
                b"chunked",
                b"",
            ]
        ),
        st.binary(max_size=20).filter(lambda b: b"\r\n" not in b),
    )
    header = st.tuples(name, value).map(lambda t: t[0] + b": " + t[1])
    head = st.tuples(token, target, version, st.lists(header, max_size=6)).map(
        lambda t: b" ".join(t[:3]) + b"\r\n" + b"".join(h + b"\r\n" for h in t[3]) + b"\r\n"
    )
    return st.tuples(head, st.binary(max_size=10)).map(b"".join)


def check_parse_request(data: bytes, cap: int, max_body: int) -> None:
    try:
        result = parse_request(data, cap, max_body)
    except HandshakeError as exc:
        assert exc.status in (400, 411, 413, 431)
        return
    if result is None:
        return
    request, used = result
    assert isinstance(request, Request)
    assert 0 < used <= len(data)
    assert len(request.body) <= max_body
    try:
        check_upgrade(request)
    except HandshakeError as exc:
        assert exc.status in (400, 426)


@FUZZ
@given(
    data=st.binary(max_size=400),
    cap=st.sampled_from([16, 64, 8192]),
    max_body=st.sampled_from([0, 8, 65536]),
)
def test_parse_request_on_arbitrary_bytes(data, cap, max_body):
    check_parse_request(data, cap, max_body)


@FUZZ
@given(
    data=request_like(), cap=st.sampled_from([64, 8192]), max_body=st.sampled_from([0, 8, 65536])
)
@example(data=b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", cap=8192, max_body=65536)
@example(data=b"GET //[ HTTP/1.1\r\n\r\n", cap=8192, max_body=65536)
@example(
    data=b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: \xe9\r\n\r\n",
    cap=8192,
    max_body=65536,
)
def test_parse_request_and_check_upgrade_on_request_like_bytes(data, cap, max_body):
    check_parse_request(data, cap, max_body)


@FUZZ
@given(data=request_like())
def test_parse_request_prefixes_never_consume_more_than_the_whole(data):
    try:
        whole = parse_request(data)
    except HandshakeError:
        return
    for i in range(len(data)):
        try:
            part = parse_request(data[:i])
        except HandshakeError:
            continue
        if part is not None:
            assert whole is not None and part[1] <= i


# ---- messages ------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)
op_like = st.fixed_dictionaries(
    {},
    optional={
        "op": st.sampled_from(["send", "recv", "ack", "", 1]) | json_values,
        "to": st.sampled_from(["bob", "", "a" * 65, "b\n"]) | json_values,
        "cid": st.sampled_from(["c", "", "x" * 129]) | json_values,
        "body": json_values,
        "ids": st.lists(st.text(max_size=70), max_size=5) | json_values,
    },
)


@FUZZ
@given(obj=op_like | json_values, max_body=st.sampled_from([0, 10, 65536]))
def test_decode_client_op_on_arbitrary_json(obj, max_body):
    payload = json.dumps(obj).encode()
    try:
        result = decode_client_op(payload, max_body)
    except RequestError as exc:
        assert exc.code in ("bad_request", "too_large")
        assert exc.cid is None or isinstance(exc.cid, str)
        return
    assert isinstance(obj, dict)
    if type(result) is Send:
        assert obj["op"] == "send" and result.to == obj["to"] and result.cid == obj["cid"]
        assert json.loads(bytes(result.body)) == obj["body"]
        assert len(bytes(result.body)) <= max_body
    else:
        assert type(result) is Recv and obj["op"] == "recv" and result.ids == obj["ids"]


@FUZZ
@given(payload=st.binary(max_size=200))
@example(payload=b'{"op":"send","to":"b","cid":"c","body":' + b"[" * 5000 + b"]" * 5000 + b"}")
def test_decode_client_op_on_arbitrary_bytes(payload):
    try:
        decode_client_op(payload, 65536)
    except RequestError as exc:
        assert exc.code in ("bad_request", "too_large")
