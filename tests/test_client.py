"""roost.client against a real roost server over real sockets.

The ``server`` fixture (tests/conftest.py) starts ``roost serve`` on a free port
with a fresh data dir per test, so inboxes never leak between tests. The tests
are plain functions that run one coroutine with ``asyncio.run``: no pytest
plugin needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from websockets.asyncio.server import ServerConnection, serve

from roost.auth import load_secret
from roost.client import (
    Ack,
    ClientError,
    Disconnected,
    HandshakeFailed,
    Message,
    Receipt,
    ServerError,
    connect,
)

if TYPE_CHECKING:
    from conftest import RoostServer


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


# -- messaging -----------------------------------------------------------------


def test_send_ack_msg_recv_receipt(server: RoostServer) -> None:
    async def main() -> None:
        async with (
            connect(server.url, server.token("alice")) as alice,
            connect(server.url, server.token("bob")) as bob,
        ):
            ack = await alice.send("bob", {"text": "hi"}, cid="a1")
            assert isinstance(ack, Ack)
            assert ack.cid == "a1"
            assert len(ack.id) == 20 and int(ack.id, 16) >= 0
            assert abs(ack.ts - time.time() * 1000) < 60_000

            msg = await bob.recv_item()
            assert msg == Message(ack.id, "alice", "bob", ack.ts, {"text": "hi"})
            await bob.confirm([msg.id])

            receipt = await alice.recv_item()
            assert isinstance(receipt, Receipt)
            assert (receipt.ref, receipt.by, receipt.status) == (ack.id, "bob", "delivered")
            await alice.confirm(receipt.id)

    run(main())


def test_send_generates_unique_cids(server: RoostServer) -> None:
    async def main() -> None:
        async with connect(server.url, server.token("alice")) as alice:
            acks = await asyncio.gather(*(alice.send("bob", n) for n in range(20)))
        assert len({a.cid for a in acks}) == 20
        assert len({a.id for a in acks}) == 20

    run(main())


def test_offline_inbox_is_redelivered_in_order_until_confirmed(server: RoostServer) -> None:
    async def main() -> None:
        async with connect(server.url, server.token("alice")) as alice:
            acks = [await alice.send("carol", {"n": n}) for n in range(3)]

        for _ in range(2):  # unconfirmed: delivered again on every connection
            async with connect(server.url, server.token("carol")) as carol:
                items = [await carol.recv_item() for _ in acks]
                assert [i.id for i in items] == [a.id for a in acks]
                assert [i.body for i in items if isinstance(i, Message)] == [
                    {"n": n} for n in range(3)
                ]
                assert sorted(i.id for i in items) == [i.id for i in items]

        async with connect(server.url, server.token("carol")) as carol:
            items = [await carol.recv_item() for _ in acks]
            await carol.confirm(i.id for i in items)
        async with connect(server.url, server.token("carol")) as carol:
            with pytest.raises(TimeoutError):
                await carol.recv_item(timeout=0.5)

        async with connect(server.url, server.token("alice")) as alice:
            receipts = [await alice.recv_item() for _ in acks]
            assert [r.ref for r in receipts if isinstance(r, Receipt)] == [a.id for a in acks]

    run(main())


def test_iteration_yields_items_and_ends_when_the_connection_closes(server: RoostServer) -> None:
    async def main() -> None:
        async with connect(server.url, server.token("alice")) as alice:
            for n in range(3):
                await alice.send("bob", n)
        async with connect(server.url, server.token("bob")) as bob:
            seen = []
            async for item in bob:
                assert isinstance(item, Message)
                seen.append(item.body)
                if len(seen) == 3:
                    await bob.close()
            assert seen == [0, 1, 2]
            assert bob.close_code == 1000

    run(main())


def test_a_newer_connection_replaces_the_older_with_4001(server: RoostServer) -> None:
    async def main() -> None:
        async with connect(server.url, server.token("bob")) as old:
            await old.send("alice", "before")  # old is surely registered before new connects
            async with connect(server.url, server.token("bob")) as new:
                await asyncio.wait_for(old.wait_closed(), 5)
                assert old.close_code == 4001
                assert [item async for item in old] == []
                with pytest.raises(Disconnected) as info:
                    await old.send("alice", "late")
                assert info.value.code == 4001
                assert isinstance(await new.send("alice", "still here"), Ack)

    run(main())


# -- errors ----------------------------------------------------------------------


def test_error_frame_for_a_send_raises_server_error_and_keeps_the_connection(
    server: RoostServer,
) -> None:
    async def main() -> None:
        async with connect(server.url, server.token("alice")) as alice:
            with pytest.raises(ServerError) as info:
                await alice.send("bob", "x" * 70_000, cid="big")
            assert (info.value.code, info.value.cid) == ("too_large", "big")
            assert info.value.reason

            with pytest.raises(ServerError) as info:
                await alice.send("not a user id!", "hi", cid="bad-to")
            assert (info.value.code, info.value.cid) == ("bad_request", "bad-to")

            assert isinstance(await alice.send("bob", "small"), Ack)

    run(main())


def test_error_without_a_cid_lands_in_errors(server: RoostServer) -> None:
    async def main() -> None:
        async with connect(server.url, server.token("alice")) as alice:
            await alice.send_frame("this is not JSON")
            # Frames are answered in order, so the error precedes this ack.
            await alice.send("bob", "after")
            assert [(e.code, e.cid) for e in alice.errors] == [("bad_request", None)]

    run(main())


def test_confirm_accepts_more_ids_than_one_frame_holds(server: RoostServer) -> None:
    async def main() -> None:
        async with connect(server.url, server.token("alice")) as alice:
            await alice.confirm(f"{n:020x}" for n in range(2500))  # unknown ids: ignored
            assert alice.errors == []
            assert isinstance(await alice.send("bob", "still open"), Ack)
            assert alice.errors == []

    run(main())


def test_recv_item_times_out(server: RoostServer) -> None:
    async def main() -> None:
        async with connect(server.url, server.token("alice")) as alice:
            with pytest.raises(TimeoutError):
                await alice.recv_item(timeout=0.2)

    run(main())


# -- connecting ------------------------------------------------------------------


def test_bearer_token(server: RoostServer) -> None:
    async def main() -> None:
        async with connect(server.url, server.token("alice"), bearer=True) as alice:
            assert isinstance(await alice.send("bob", "hi"), Ack)

    run(main())


@pytest.mark.parametrize(
    ("token", "error"),
    [
        ("", "missing token"),
        ("not-a-jwt", "invalid token: "),
        ("forged", "invalid token: "),
        ("expired", "token expired"),
        ("bad-sub", "invalid token: bad sub"),
    ],
)
def test_refused_handshake_raises_handshake_failed(
    server: RoostServer, token: str, error: str
) -> None:
    secret = load_secret(server.data_dir)
    tokens = {
        "forged": jwt.encode({"sub": "alice"}, b"another-secret" * 4, algorithm="HS256"),
        "expired": server.token("alice", ttl=-10),
        "bad-sub": jwt.encode({"sub": "not a user id!"}, secret, algorithm="HS256"),
    }

    async def main() -> None:
        with pytest.raises(HandshakeFailed) as info:
            async with connect(server.url, tokens.get(token, token)):
                pass
        assert info.value.status == 401
        assert info.value.error.startswith(error)

    run(main())


def test_unknown_path_is_404(server: RoostServer) -> None:
    async def main() -> None:
        with pytest.raises(HandshakeFailed) as info:
            async with connect(f"ws://127.0.0.1:{server.port}/nope", server.token("alice")):
                pass
        assert (info.value.status, info.value.error) == (404, "not found")

    run(main())


# -- a misbehaving server (in-process, not roost) ------------------------------------


def test_unknown_ops_are_skipped_and_a_malformed_frame_stops_the_client() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send('{"op": "typing", "from": "bob"}')  # a future op: ignored
        await ws.send('{"op": "msg", "id": "1", "from": "bob", "to": "a", "ts": 1, "body": 2}')
        await ws.send('{"op": "msg", "id": "2"}')  # fields missing
        await ws.wait_closed()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0) as srv:
            port = srv.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}/ws", "t") as c:
                assert await c.recv_item() == Message("1", "bob", "a", 1, 2)
                with pytest.raises(ClientError, match="malformed frame"):
                    await c.recv_item()
                with pytest.raises(ClientError, match="malformed frame"):
                    await c.send("bob", "hi")
                assert c.close_code == 1002

    run(main())
