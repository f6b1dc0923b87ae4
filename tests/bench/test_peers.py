"""The peers speak protocol v1 for 1:1 messages (docs/protocol.md)."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from roost.auth import issue_token
from roost.bench.spawn import Server


def _ws(server: Server, user: str) -> ClientConnection:
    return connect(f"{server.url}?token={issue_token(server.secret, user)}", open_timeout=5)


def _recv(ws: ClientConnection) -> dict[str, object]:
    return json.loads(ws.recv(timeout=5))


def test_bad_token_is_401_json(peer: Server) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(f"{peer.url}?token=nope", open_timeout=5)
    assert info.value.response.status_code == 401
    assert json.loads(info.value.response.body)["error"].startswith("invalid token")


def test_missing_token_and_unknown_path(peer: Server) -> None:
    with pytest.raises(InvalidStatus) as info:
        connect(peer.url, open_timeout=5)
    assert json.loads(info.value.response.body) == {"error": "missing token"}
    response = httpx.get(f"http://127.0.0.1:{peer.port}/elsewhere")
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


def test_send_ack_msg_recv_receipt(peer: Server) -> None:
    with _ws(peer, "alice") as alice, _ws(peer, "bob") as bob:
        alice.send(json.dumps({"op": "send", "to": "bob", "cid": "c1", "body": {"text": "hi"}}))
        ack = _recv(alice)
        assert ack["op"] == "ack" and ack["cid"] == "c1"
        msg = _recv(bob)
        assert msg["op"] == "msg" and msg["id"] == ack["id"] and msg["from"] == "alice"
        assert msg["body"] == {"text": "hi"}
        bob.send(json.dumps({"op": "recv", "ids": [msg["id"]]}))
        receipt = _recv(alice)
        assert receipt["op"] == "receipt" and receipt["ref"] == msg["id"] and receipt["by"] == "bob"
        alice.send(json.dumps({"op": "recv", "ids": [receipt["id"]]}))


def test_body_is_delivered_byte_for_byte(peer: Server) -> None:
    with _ws(peer, "carol") as carol, _ws(peer, "dave") as dave:
        carol.send('{"op":"send","to":"dave","cid":"x","body":{ "a" : [1, 2.50] }}')
        _recv(carol)
        raw = dave.recv(timeout=5)
        assert isinstance(raw, str) and '"body":{ "a" : [1, 2.50] }}' in raw
        dave.send(json.dumps({"op": "recv", "ids": [json.loads(raw)["id"]]}))


def test_inbox_is_redelivered_until_confirmed_and_replacement_closes_4001(peer: Server) -> None:
    with _ws(peer, "erin") as erin:
        erin.send(json.dumps({"op": "send", "to": "frank", "cid": "1", "body": 1}))
        erin.send(json.dumps({"op": "send", "to": "frank", "cid": "2", "body": 2}))
        ids = [_recv(erin)["id"], _recv(erin)["id"]]
    with _ws(peer, "frank") as first:
        assert [_recv(first)["id"] for _ in ids] == ids
        with _ws(peer, "frank") as second:
            assert [_recv(second)["id"] for _ in ids] == ids  # unconfirmed: again
            with pytest.raises(ConnectionClosed) as info:
                first.recv(timeout=5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4001
            second.send(json.dumps({"op": "recv", "ids": ids}))
    with _ws(peer, "frank") as third:
        third.send(json.dumps({"op": "send", "to": "frank", "cid": "self", "body": 0}))
        first_item = [_recv(third) for _ in range(2)]
        assert {m["op"] for m in first_item} == {"ack", "msg"}  # confirmed items are gone


@pytest.mark.parametrize(
    ("frame", "code", "cid"),
    [
        ("not json", "bad_request", None),
        ('{"op":"nope","cid":"z"}', "bad_request", "z"),
        ('{"op":"send","cid":"q","to":"bob"}', "bad_request", "q"),
        ('{"op":"send","cid":"q","to":"b b","body":1}', "bad_request", "q"),
        ('{"op":"send","cid":"big","to":"bob","body":"' + "x" * 70000 + '"}', "too_large", "big"),
    ],
)
def test_errors_keep_the_connection_open(peer: Server, frame: str, code: str, cid: str) -> None:
    with _ws(peer, "gina") as gina:
        gina.send(frame)
        error = _recv(gina)
        assert error["op"] == "error" and error["code"] == code and error["cid"] == cid
        gina.send(json.dumps({"op": "send", "to": "nobody", "cid": "ok", "body": 0}))
        assert _recv(gina)["op"] == "ack"
