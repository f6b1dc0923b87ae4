"""Presence across workers, over WebSocket and the HTTP API; last_seen is durable."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from roost.workers.routing import owner_of

TIMEOUT = 15


def open_ws(server, user: str) -> Any:  # type: ignore[no-untyped-def]
    return connect(server.ws_url(user), compression=None, open_timeout=TIMEOUT)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def presence(ws: ClientConnection, users: list[str], cid: str | None = None) -> Any:
    request: dict[str, Any] = {"op": "presence", "users": users}
    if cid is not None:
        request["cid"] = cid
    await ws.send(json.dumps(request))
    answer = await recv(ws)
    assert answer["op"] == "presence", answer
    return answer


def api_presence(server, users: list[str]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    key = (server.data_dir / "api-key").read_text().strip()
    response = httpx.get(
        f"{server.http}/api/presence",
        params={"users": ",".join(users)},
        headers={"Authorization": f"Bearer {key}"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text
    return response.json()["users"]  # type: ignore[no-any-return]


async def test_presence_across_workers(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3")
    users = [f"p{i}" for i in range(12)]
    assert len({owner_of(u, 3) for u in users}) == 3
    online, gone, never = users[:4], users[4:8], users[8:]
    before = int(time.time() * 1000)
    for user in gone:  # connect, then leave
        async with open_ws(server, user):
            pass
    after = int(time.time() * 1000)
    conns = [await open_ws(server, u) for u in online]
    asker = conns[0]
    answer = await presence(asker, users)
    assert list(answer) == ["op", "users"]  # no cid asked, none echoed
    got = answer["users"]
    assert list(got) == users  # in the order asked
    for user in online:
        assert got[user] == {"online": True}
    for user in gone:
        assert got[user]["online"] is False
        assert before <= got[user]["last_seen"] <= after + 1000
    for user in never:
        assert got[user] == {"online": False, "last_seen": None}
    # The HTTP API gives the same answer; duplicates are answered once.
    assert await asyncio.to_thread(api_presence, server, [*users, users[0]]) == got
    # A user who disconnects is offline at once, with a fresh last_seen.
    await conns[1].close()
    answer = await presence(asker, [online[1]], cid="q1")
    assert answer["cid"] == "q1"
    assert answer["users"][online[1]]["online"] is False
    assert answer["users"][online[1]]["last_seen"] >= after
    for ws in conns:
        await ws.close()


async def test_last_seen_survives_a_restart(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "2")
    users = [f"r{i}" for i in range(6)]
    for user in users:
        async with open_ws(server, user):
            pass
    first = await asyncio.to_thread(api_presence, server, users)
    assert all(v["online"] is False and v["last_seen"] for v in first.values())
    server.restart()
    assert await asyncio.to_thread(api_presence, server, users) == first


async def test_presence_limits(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "2")
    async with open_ws(server, "asker") as ws:
        many = [f"u{i}" for i in range(256)]
        answer = await presence(ws, many)
        assert len(answer["users"]) == 256
        await ws.send(json.dumps({"op": "presence", "users": [*many, "one_more"], "cid": "big"}))
        error = await recv(ws)
        assert (error["op"], error["cid"], error["code"]) == ("error", "big", "bad_request")
        assert (await presence(ws, []))["users"] == {}
        assert (await presence(ws, ["asker"]))["users"] == {"asker": {"online": True}}
