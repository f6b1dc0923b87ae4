"""roost.proto.messages: protocol v1 ops as docs/protocol.md defines them."""

from __future__ import annotations

import json

import msgspec
import pytest

from roost.errors import RemoteError, RequestError
from roost.proto.messages import (
    MAX_RECV_IDS,
    Ack,
    ErrorFrame,
    Msg,
    Receipt,
    Recv,
    Send,
    decode_client_op,
    encode,
)

MAX_BODY = 65536


def op(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def request_error(payload: bytes, code: str = "bad_request", max_body: int = MAX_BODY):
    with pytest.raises(RequestError) as info:
        decode_client_op(payload, max_body)
    assert info.value.code == code, info.value.reason
    assert isinstance(info.value, RemoteError)
    assert info.value.reason == str(info.value)
    return info.value


def send(to: object = "bob", cid: object = "c1", body: object = None) -> bytes:
    return op(
        {"op": "send", "to": to, "cid": cid, "body": {"text": "hi"} if body is None else body}
    )


# ---- valid ops ---------------------------------------------------------------------


def test_send_from_protocol_md():
    result = decode_client_op(
        b'{"op": "send", "to": "bob", "cid": "c1", "body": {"text": "hi"}}', MAX_BODY
    )
    assert type(result) is Send
    assert result.to == "bob" and result.cid == "c1"
    assert isinstance(result.body, msgspec.Raw)
    assert bytes(result.body) == b'{"text": "hi"}'


def test_recv_from_protocol_md():
    result = decode_client_op(b'{"op": "recv", "ids": ["0193a1b2c3d400000001"]}', MAX_BODY)
    assert type(result) is Recv
    assert result.ids == ["0193a1b2c3d400000001"]


def test_recv_with_no_ids_and_with_the_most_ids():
    assert decode_client_op(op({"op": "recv", "ids": []}), MAX_BODY) == Recv([])
    ids = [f"{i:020x}" for i in range(MAX_RECV_IDS)]
    assert decode_client_op(op({"op": "recv", "ids": ids}), MAX_BODY) == Recv(ids)


def test_field_order_does_not_matter_and_unknown_fields_are_ignored():
    result = decode_client_op(
        b'{"body":1,"cid":"x","extra":[1,2],"to":"bob","op":"send"}', MAX_BODY
    )
    assert (result.to, result.cid, bytes(result.body)) == ("bob", "x", b"1")


@pytest.mark.parametrize(
    "body",
    [
        b'{"text": "hi"}',
        b"null",
        b"0",
        b"-1.5e300",
        b'"a string"',
        b"[1, [2, [3]], {}]",
        b'{ "spaced" :  [ 1 ,2 ]  , "u": "\\u00e9\\ud83d\\ude00" }',
        '{"raw": "é😀"}'.encode(),
        b"true",
        b"{}",
    ],
)
def test_body_is_kept_byte_for_byte(body):
    payload = b'{"op":"send","to":"bob","cid":"c1","body":' + body + b"}"
    result = decode_client_op(payload, MAX_BODY)
    assert bytes(result.body) == body
    # Re-encoding a message embeds the body as it was sent.
    msg = encode(Msg("i", "alice", "bob", 1, result.body))
    assert msg.endswith(b'"body":' + body + b"}")


def test_whitespace_around_the_body_is_not_part_of_it():
    payload = b'{"op":"send","to":"bob","cid":"c1","body":   [ 1 ]   }'
    assert bytes(decode_client_op(payload, MAX_BODY).body) == b"[ 1 ]"


@pytest.mark.parametrize(
    "user",
    ["a", "bob", "A-Z.a_z@0-9", "x" * 64, "alice@example.com", "...", "-", "@"],
)
def test_valid_user_ids(user):
    assert decode_client_op(send(to=user), MAX_BODY).to == user


@pytest.mark.parametrize("cid", ["1", "x" * 128, "é" * 128, "😀", " spaces ok ", "\n"])
def test_valid_cids(cid):
    # 1 to 128 characters, any characters.
    assert decode_client_op(send(cid=cid), MAX_BODY).cid == cid


# ---- bad_request -------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"{",
        b'{"op":"send"',
        b"{'op': 'send'}",
        b'{"op":"recv","ids":[]} x',
        b"\xef\xbb\xbf{}",
    ],
)
def test_not_json(payload):
    exc = request_error(payload)
    assert exc.reason.startswith("not valid JSON")
    assert exc.cid is None


@pytest.mark.parametrize("payload", [b"[]", b'["send"]', b"1", b'"send"', b"null", b"true"])
def test_not_an_object(payload):
    exc = request_error(payload)
    assert "object" in exc.reason
    assert exc.cid is None


@pytest.mark.parametrize("name", ["sned", "ack", "msg", "SEND", "", "receipt", "error"])
def test_unknown_op(name):
    exc = request_error(op({"op": name, "cid": "c7"}))
    assert "op" in exc.reason
    assert exc.cid == "c7"


@pytest.mark.parametrize("value", [None, 1, ["send"], {"op": "send"}, True])
def test_op_of_the_wrong_type(value):
    exc = request_error(op({"op": value, "to": "bob", "cid": "c1", "body": 1}))
    assert exc.cid == "c1"


def test_missing_op():
    exc = request_error(op({"to": "bob", "cid": "c2", "body": 1}))
    assert "op" in exc.reason
    assert exc.cid == "c2"


@pytest.mark.parametrize("field", ["to", "cid", "body"])
def test_send_missing_field(field):
    obj = {"op": "send", "to": "bob", "cid": "c3", "body": 1}
    del obj[field]
    exc = request_error(op(obj))
    assert field in exc.reason
    assert exc.cid == (None if field == "cid" else "c3")


def test_recv_missing_ids():
    exc = request_error(op({"op": "recv"}))
    assert "ids" in exc.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", 5),
        ("to", None),
        ("to", ["bob"]),
        ("cid", 5),
        ("cid", None),
        ("cid", ["c"]),
    ],
)
def test_send_mistyped_field(field, value):
    obj = {"op": "send", "to": "bob", "cid": "c4", "body": 1}
    obj[field] = value
    exc = request_error(op(obj))
    assert field in exc.reason
    # A cid that is not a string cannot be echoed.
    assert exc.cid == (None if field == "cid" else "c4")


@pytest.mark.parametrize("ids", ["id", None, 5, {"a": 1}, [1], [None], [["x"]], ["ok", 2]])
def test_recv_mistyped_ids(ids):
    exc = request_error(op({"op": "recv", "ids": ids}))
    assert "ids" in exc.reason


@pytest.mark.parametrize(
    "user",
    ["", "x" * 65, "a b", "bob!", "é", "a/b", "a+b", "bob\t", " bob", "bob\n", "\nbob", "b\nob"],
)
def test_bad_user_id(user):
    exc = request_error(send(to=user, cid="c5"))
    assert "to" in exc.reason
    assert exc.cid == "c5"


@pytest.mark.parametrize("cid", ["", "x" * 129, "é" * 129])
def test_cid_empty_or_too_long(cid):
    exc = request_error(send(cid=cid))
    assert "cid" in exc.reason


def test_too_many_ids():
    assert MAX_RECV_IDS == 1000  # docs/protocol.md: at most 1,000 ids per frame
    ids = [f"{i:020x}" for i in range(1001)]
    exc = request_error(op({"op": "recv", "ids": ids}))
    assert "ids" in exc.reason


def test_id_too_long():
    exc = request_error(op({"op": "recv", "ids": ["x" * 65]}))
    assert "ids" in exc.reason
    assert decode_client_op(op({"op": "recv", "ids": ["x" * 64]}), MAX_BODY) == Recv(["x" * 64])


def test_cid_is_extracted_even_when_the_error_is_elsewhere():
    exc = request_error(b'{"cid":"early","op":"send","to":"not valid!","body":1}')
    assert exc.cid == "early"
    exc = request_error(b'{"op":"send","to":"not valid!","body":1,"cid":"late"}')
    assert exc.cid == "late"


def test_no_cid_when_the_payload_is_not_json_even_if_one_is_there():
    exc = request_error(b'{"op":"send","cid":"c6","to":"bob","body":}')
    assert exc.cid is None


@pytest.mark.parametrize(
    "payload",
    [
        # The body, an unknown field, or a mistyped field nested thousands deep.
        b'{"op":"send","to":"b","cid":"c","body":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"op":"recv","ids":[],"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"op":"send","to":"b!","cid":"c","body":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        b'{"op":"recv","ids":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=["body", "unknown-field", "body-after-a-bad-to", "ids"],
)
def test_deep_nesting_is_bad_request_not_a_crash(payload):
    # 10 KB of brackets, well under max_body: a client can always send this.
    with pytest.raises(RequestError) as info:
        decode_client_op(payload, MAX_BODY)
    assert info.value.code in ("bad_request", "too_large")


# ---- too_large ------------------------------------------------------------------------


def test_body_exactly_at_the_limit():
    body = b'"' + b"a" * 98 + b'"'
    assert len(body) == 100
    result = decode_client_op(b'{"op":"send","to":"bob","cid":"c8","body":' + body + b"}", 100)
    assert bytes(result.body) == body


def test_body_one_byte_over_the_limit():
    body = b'"' + b"a" * 99 + b'"'
    exc = request_error(
        b'{"op":"send","to":"bob","cid":"c8","body":' + body + b"}", "too_large", 100
    )
    assert exc.cid == "c8"
    assert exc.reason == "body is 101 bytes, the limit is 100"


def test_body_size_is_counted_in_bytes_as_sent():
    # 50 two-byte characters: 100 bytes of UTF-8 plus quotes.
    body = ('"' + "é" * 50 + '"').encode()
    request_error(b'{"op":"send","to":"bob","cid":"c","body":' + body + b"}", "too_large", 101)
    # Escaped, the same text is longer on the wire, and that is what counts.
    escaped = b'"' + b"\\u00e9" * 50 + b'"'
    request_error(b'{"op":"send","to":"bob","cid":"c","body":' + escaped + b"}", "too_large", 301)
    assert decode_client_op(b'{"op":"send","to":"bob","cid":"c","body":' + escaped + b"}", 302)


def test_too_large_at_the_default_limit():
    body = b'"' + b"x" * (MAX_BODY - 2) + b'"'
    assert decode_client_op(send(body=None).replace(b'{"text": "hi"}', body), MAX_BODY)
    body = b'"' + b"x" * (MAX_BODY - 1) + b'"'
    exc = request_error(send(body=None).replace(b'{"text": "hi"}', body), "too_large")
    assert exc.cid == "c1"


def test_a_bad_request_wins_over_too_large():
    body = b'"' + b"x" * 200 + b'"'
    request_error(b'{"op":"send","to":"bad!","cid":"c","body":' + body + b"}", "bad_request", 10)


# ---- encoding what the server sends ---------------------------------------------------


def test_encode_ack():
    ack = Ack(cid="c1", id="0193a1b2c3d400000001", ts=1764172800123)
    assert encode(ack) == (
        b'{"op":"ack","cid":"c1","id":"0193a1b2c3d400000001","ts":1764172800123}'
    )


def test_encode_msg_uses_from_not_sender():
    msg = Msg(
        id="0193a1b2c3d400000001",
        sender="alice",
        to="bob",
        ts=1764172800123,
        body=msgspec.Raw(b'{"text":"hi"}'),
    )
    out = encode(msg)
    assert out == (
        b'{"op":"msg","id":"0193a1b2c3d400000001","from":"alice","to":"bob",'
        b'"ts":1764172800123,"body":{"text":"hi"}}'
    )
    assert b"sender" not in out
    assert list(json.loads(out)) == ["op", "id", "from", "to", "ts", "body"]


def test_encode_msg_with_defaults_still_has_every_field():
    out = encode(Msg(id="i", sender="a"))
    assert json.loads(out) == {"op": "msg", "id": "i", "from": "a", "to": "", "ts": 0, "body": None}


def test_encode_receipt():
    receipt = Receipt(
        id="0193a1b2c3d600000001",
        ref="0193a1b2c3d400000001",
        by="bob",
        status="delivered",
        ts=1764172800456,
    )
    assert encode(receipt) == (
        b'{"op":"receipt","id":"0193a1b2c3d600000001","ref":"0193a1b2c3d400000001",'
        b'"by":"bob","status":"delivered","ts":1764172800456}'
    )


def test_encode_error_frame():
    assert encode(ErrorFrame("c1", "too_large", "body is 70000 bytes, the limit is 65536")) == (
        b'{"op":"error","cid":"c1","code":"too_large",'
        b'"reason":"body is 70000 bytes, the limit is 65536"}'
    )
    assert encode(ErrorFrame(None, "bad_request", "x")) == (
        b'{"op":"error","cid":null,"code":"bad_request","reason":"x"}'
    )


def test_encode_error_frame_of_a_request_error():
    exc = request_error(send(to="bad!", cid='quote " and \\'))
    frame = json.loads(encode(ErrorFrame(exc.cid, exc.code, exc.reason)))
    assert frame["cid"] == 'quote " and \\'
    assert frame["code"] == "bad_request"


def test_encoded_ops_do_not_decode_as_client_ops():
    # The server's ops are not valid client ops: a client echoing them back
    # gets bad_request, never a send.
    for server_op in (
        Ack("c", "i", 1),
        Msg("i", "a", "b", 1),
        Receipt("i", "r", "b", "delivered", 1),
    ):
        request_error(encode(server_op))


def test_encode_plain_json_values():
    assert encode({"error": "not found"}) == b'{"error":"not found"}'
    assert encode(["é"]) == '["é"]'.encode()


# ---- fast encoders: byte for byte what the Structs encode ----------------------------


@pytest.mark.parametrize("cid", ["c1", 'quote " and \\ backslash', "é ünïcode", "\n\t\x00"])
def test_encode_ack_matches_the_struct(cid):
    from roost.proto.messages import Ack, encode_ack

    assert encode_ack(cid, "01a218c479d300000000", 1795711859155) == encode(
        Ack(cid, "01a218c479d300000000", 1795711859155)
    )


@pytest.mark.parametrize("body", [b"1", b'{"text": "hi \\u00e9"}', b'[1, {"a": null}]', b'"x"'])
def test_encode_msg_matches_the_struct(body):
    import msgspec

    from roost.proto.messages import Msg, encode_msg

    expected = encode(Msg("01a218c479d300000000", "al.ice@x", "b_o-b", 5, msgspec.Raw(body)))
    assert encode_msg("01a218c479d300000000", "al.ice@x", "b_o-b", 5, body) == expected


def test_encode_receipt_matches_the_struct():
    from roost.proto.messages import Receipt, encode_receipt

    expected = encode(
        Receipt("01a218c479d300000001", "01a218c479d300000000", "bob", "delivered", 7)
    )
    assert encode_receipt("01a218c479d300000001", "01a218c479d300000000", "bob", 7) == expected


# ---- groups and presence (docs/protocol.md) ------------------------------------------


def test_group_send():
    from roost.proto.messages import Send

    result = decode_client_op(
        b'{"op":"send","group":"g1","cid":"c1","body":{"text":"hi"}}', MAX_BODY
    )
    assert type(result) is Send
    assert (result.to, result.group, result.cid) == (None, "g1", "c1")


@pytest.mark.parametrize(
    "fields",
    [{}, {"to": "bob", "group": "g1"}, {"to": None}, {"group": None}, {"to": None, "group": None}],
)
def test_send_needs_exactly_one_of_to_and_group(fields):
    exc = request_error(op({"op": "send", "cid": "c6", "body": 1, **fields}))
    assert '"to"' in exc.reason and '"group"' in exc.reason
    assert exc.cid == "c6"


@pytest.mark.parametrize("group", ["", "x" * 65, "a b", "g!", 5, ["g"]])
def test_bad_group_id(group):
    exc = request_error(op({"op": "send", "group": group, "cid": "c7", "body": 1}))
    assert "group" in exc.reason
    assert exc.cid == "c7"


def test_a_group_send_body_over_the_limit_is_too_large():
    request_error(op({"op": "send", "group": "g", "cid": "c", "body": "x" * 9}), "too_large", 10)


def test_presence():
    from roost.proto.messages import MAX_PRESENCE_USERS, Presence

    assert MAX_PRESENCE_USERS == 256
    result = decode_client_op(b'{"op":"presence","users":["bob","carol"]}', MAX_BODY)
    assert result == Presence(["bob", "carol"])
    assert result.cid is None
    with_cid = decode_client_op(b'{"op":"presence","users":[],"cid":"p"}', MAX_BODY)
    assert with_cid == Presence([], "p")
    users = [f"u{i}" for i in range(256)]
    assert decode_client_op(op({"op": "presence", "users": users}), MAX_BODY).users == users


@pytest.mark.parametrize(
    "users", [None, "bob", [5], ["bad user"], [f"u{i}" for i in range(257)], {"bob": 1}]
)
def test_presence_bad_users(users):
    exc = request_error(op({"op": "presence", "users": users, "cid": "p1"}))
    assert "users" in exc.reason
    assert exc.cid == "p1"


def test_presence_missing_users():
    assert "users" in request_error(op({"op": "presence"})).reason


@pytest.mark.parametrize("body", [b"1", b'{"text": "hi \\u00e9"}', b'[1, {"a": null}]'])
def test_encode_group_msg_matches_the_struct(body):
    from roost.proto.messages import GroupMsg, encode_group_msg

    expected = encode(
        GroupMsg("01a218c479d300000000", "al.ice", "bob", "g.1", 5, msgspec.Raw(body))
    )
    assert encode_group_msg("01a218c479d300000000", "al.ice", "bob", "g.1", 5, body) == expected
    assert list(json.loads(expected)) == ["op", "id", "from", "to", "group", "ts", "body"]


def test_encode_presence():
    from roost.proto.messages import encode_presence

    users = {"bob": {"online": True}, "carol": {"online": False, "last_seen": 17}}
    assert json.loads(encode_presence(users)) == {"op": "presence", "users": users}
    assert json.loads(encode_presence({}, "p")) == {"op": "presence", "cid": "p", "users": {}}
    # An answer echoed back is not a valid request.
    request_error(encode_presence(users))
