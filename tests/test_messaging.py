"""Messaging end to end, with the `websockets` library as the client: ack,
delivery, receipts, the durable inbox across reconnects, restarts and kill -9,
replacement, limits."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from rawws import RawWS
from roost.proto.frames import OP_TEXT, encode_frame

TIMEOUT = 10


def open_ws(server, user: str) -> Any:  # type: ignore[no-untyped-def]
    return connect(server.ws_url(user), compression=None, open_timeout=TIMEOUT)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def send(ws: ClientConnection, to: str, body: Any, cid: str) -> dict[str, Any]:
    """Send and return the ack (the sender gets nothing else in between here)."""
    await ws.send(json.dumps({"op": "send", "to": to, "cid": cid, "body": body}))
    ack = await recv(ws)
    assert ack["op"] == "ack", ack
    assert ack["cid"] == cid
    return ack


async def confirm(ws: ClientConnection, *ids: str) -> None:
    await ws.send(json.dumps({"op": "recv", "ids": list(ids)}))


async def test_online_delivery_ack_msg_recv_receipt(server):  # type: ignore[no-untyped-def]
    async with open_ws(server, "alice") as alice, open_ws(server, "bob") as bob:
        ack = await send(alice, "bob", {"text": "hi"}, "c1")
        assert len(ack["id"]) == 20
        assert isinstance(ack["ts"], int)
        msg = await recv(bob)
        assert msg == {
            "op": "msg",
            "id": ack["id"],
            "from": "alice",
            "to": "bob",
            "ts": ack["ts"],
            "body": {"text": "hi"},
        }
        await confirm(bob, msg["id"])
        receipt = await recv(alice)
        assert receipt["op"] == "receipt"
        assert (receipt["ref"], receipt["by"], receipt["status"]) == (ack["id"], "bob", "delivered")
        assert receipt["id"] != ack["id"]
        await confirm(alice, receipt["id"])
    # Everything was confirmed: nothing comes back on reconnect.
    async with open_ws(server, "alice") as alice, open_ws(server, "bob") as bob:
        await send(alice, "alice", "marker", "m")
        assert (await recv(alice))["body"] == "marker"
        await send(bob, "bob", "marker", "m")
        assert (await recv(bob))["body"] == "marker"


async def test_body_is_delivered_byte_for_byte(server):  # type: ignore[no-untyped-def]
    raw = '{"op":"send","to":"bob","cid":"b","body":{"z": 1,  "a":[1.50, "é\\u00e9"]}}'
    async with open_ws(server, "alice") as alice, open_ws(server, "bob") as bob:
        await alice.send(raw)
        assert (await recv(alice))["op"] == "ack"
        text = await asyncio.wait_for(bob.recv(), TIMEOUT)
        assert '"body":{"z": 1,  "a":[1.50, "é\\u00e9"]}' in text


async def test_offline_messages_wait_and_arrive_in_order(server):  # type: ignore[no-untyped-def]
    async with open_ws(server, "alice") as alice:
        acks = [await send(alice, "newcomer", {"n": i}, f"c{i}") for i in range(20)]
    ids = [a["id"] for a in acks]
    assert ids == sorted(ids)
    assert len(set(ids)) == 20
    async with open_ws(server, "newcomer") as bob:
        got = [await recv(bob) for _ in range(20)]
    assert [m["id"] for m in got] == ids
    assert [m["body"]["n"] for m in got] == list(range(20))


async def test_unconfirmed_items_are_delivered_again(server):  # type: ignore[no-untyped-def]
    async with open_ws(server, "alice") as alice:
        a1 = await send(alice, "bob", 1, "a")
        a2 = await send(alice, "bob", 2, "b")
    async with open_ws(server, "bob") as bob:
        first = [await recv(bob), await recv(bob)]
        assert [m["id"] for m in first] == [a1["id"], a2["id"]]
        await confirm(bob, a1["id"])
        await confirm(bob, a1["id"], "00000000000000000000")  # idempotent, unknown ignored
    async with open_ws(server, "bob") as bob:
        again = await recv(bob)
        assert again["id"] == a2["id"]
        await send(bob, "bob", "end", "e")
        # Only a2 came back before the marker: a1 was confirmed.
        marker = await recv(bob)
        assert marker["body"] == "end"


async def test_receipt_waits_for_an_offline_sender(server):  # type: ignore[no-untyped-def]
    async with open_ws(server, "alice") as alice:
        ack = await send(alice, "bob", "ping", "p")
    async with open_ws(server, "bob") as bob:
        msg = await recv(bob)
        await confirm(bob, msg["id"])
        # Wait until the confirm is committed: a later op's ack orders after it.
        await send(bob, "carol", "x", "sync")
    async with open_ws(server, "alice") as alice:
        receipt = await recv(alice)
        assert receipt["op"] == "receipt"
        assert receipt["ref"] == ack["id"]
        await confirm(alice, receipt["id"])
        await send(alice, "carol", "y", "sync")
    async with open_ws(server, "alice") as alice:
        await send(alice, "alice", "marker", "m")
        assert (await recv(alice))["body"] == "marker"  # the receipt is gone


async def test_backlog_then_live_without_reordering(server):  # type: ignore[no-untyped-def]
    """Messages sent while the recipient connects arrive exactly once, in id order."""
    count = 200
    acked: list[str] = []

    async def sender() -> None:
        async with open_ws(server, "alice") as alice:
            for i in range(count):
                await alice.send(json.dumps({"op": "send", "to": "bob", "cid": str(i), "body": i}))
            while len(acked) < count:
                frame = await recv(alice)
                if frame["op"] == "ack":
                    acked.append(frame["id"])

    task = asyncio.create_task(sender())
    await asyncio.sleep(0)
    async with open_ws(server, "bob") as bob:
        await task
        got = [(await recv(bob))["id"] for _ in range(count)]
    assert got == sorted(acked)
    assert len(set(got)) == count


async def test_newer_connection_replaces_older_with_4001(server):  # type: ignore[no-untyped-def]
    async with open_ws(server, "alice") as alice:
        await send(alice, "bob", "hello", "h")
    async with open_ws(server, "bob") as first:
        assert (await recv(first))["body"] == "hello"
        async with open_ws(server, "bob") as second:
            with pytest.raises(ConnectionClosed):
                await recv(first)
            assert first.close_code == 4001
            assert first.close_reason == "replaced by a newer connection"
            # The newer connection gets the unconfirmed backlog.
            assert (await recv(second))["body"] == "hello"


async def test_inbox_cap_refuses_new_items_and_drops_nothing(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--inbox-cap", "3")
    async with open_ws(server, "alice") as alice:
        acks = [await send(alice, "bob", i, f"c{i}") for i in range(3)]
        await alice.send(json.dumps({"op": "send", "to": "bob", "cid": "over", "body": 3}))
        error = await recv(alice)
        assert error == {
            "op": "error",
            "cid": "over",
            "code": "inbox_full",
            "reason": "the inbox of bob is full",
        }
    async with open_ws(server, "bob") as bob:
        got = [await recv(bob) for _ in range(3)]
        assert [m["id"] for m in got] == [a["id"] for a in acks]
        await confirm(bob, got[0]["id"])
    async with open_ws(server, "alice") as alice:
        # One slot is free again (alice also holds bob's receipt now).
        receipt = await recv(alice)
        assert receipt["op"] == "receipt"
        await send(alice, "bob", "fits", "f")


def test_rate_limit_answers_rate_limited(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--rate-limit", "5")
    ws = RawWS(server.port, server.token("alice"))
    frames = b"".join(
        encode_frame(OP_TEXT, json.dumps(op).encode(), mask_key=b"\x01\x02\x03\x04")
        for op in ({"op": "send", "to": "bob", "cid": f"r{i}", "body": i} for i in range(30))
    )
    # One write: the server reads all 30 in one turn, which spans at most two
    # of the limiter's one-second windows, so at most 10 can pass.
    ws.send_raw(frames)
    answers = [ws.recv_json() for _ in range(30)]
    ws.close()
    acked = [a["cid"] for a in answers if a["op"] == "ack"]
    limited = [a for a in answers if a["op"] == "error"]
    assert 5 <= len(acked) <= 10
    assert acked[:5] == ["r0", "r1", "r2", "r3", "r4"]
    assert len(limited) == 30 - len(acked)
    assert {a["code"] for a in limited} == {"rate_limited"}
    assert limited[0]["reason"] == "more than 5 frames in a second"


async def test_messages_survive_a_restart(server):  # type: ignore[no-untyped-def]
    async with open_ws(server, "alice") as alice:
        acks = [await send(alice, "bob", i, f"c{i}") for i in range(5)]
    server.restart()
    async with open_ws(server, "bob") as bob:
        got = [await recv(bob) for _ in range(5)]
    assert [m["id"] for m in got] == [a["id"] for a in acks]


async def test_kill_9_right_after_the_ack_loses_nothing(server):  # type: ignore[no-untyped-def]
    async with open_ws(server, "alice") as alice:
        for i in range(50):
            await alice.send(json.dumps({"op": "send", "to": "bob", "cid": str(i), "body": i}))
        acked = []
        while len(acked) < 50:
            frame = await recv(alice)
            acked.append(frame["id"])
        server.kill()  # the instant the last ack is read
    server.start()
    async with open_ws(server, "bob") as bob:
        got = [(await recv(bob))["id"] for _ in range(50)]
    assert got == acked
    # New ids keep sorting after the old ones.
    async with open_ws(server, "alice") as alice:
        ack = await send(alice, "bob", "after", "x")
    assert ack["id"] > acked[-1]


async def test_sigterm_drains_with_1001_and_keeps_acked_messages(server):  # type: ignore[no-untyped-def]
    alice = await open_ws(server, "alice")
    bob = await open_ws(server, "bob")
    for i in range(30):
        await alice.send(json.dumps({"op": "send", "to": "carol", "cid": str(i), "body": i}))
    await asyncio.sleep(0)
    code = await asyncio.to_thread(server.stop)
    assert code == 0
    acked = []
    with pytest.raises(ConnectionClosed):
        while True:
            frame = await recv(alice)
            if frame["op"] == "ack":
                acked.append(frame["id"])
    assert alice.close_code == 1001
    assert "reconnect" in alice.close_reason
    with pytest.raises(ConnectionClosed):
        await recv(bob)
    assert bob.close_code == 1001
    server.start()
    async with open_ws(server, "carol") as carol:
        got = [(await recv(carol))["id"] for _ in range(len(acked))]
    assert got == acked
