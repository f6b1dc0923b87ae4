"""Group sends end to end on real multi-worker servers: fan-out to online and
offline members on every worker, the ack rule, errors, and worker failure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from roost.workers.routing import owner_of

TIMEOUT = 15


def api(server, method: str, path: str, body: Any = None) -> httpx.Response:  # type: ignore[no-untyped-def]
    key = (server.data_dir / "api-key").read_text().strip()
    return httpx.request(
        method,
        f"{server.http}{path}",
        headers={"Authorization": f"Bearer {key}"},
        content=None if body is None else json.dumps(body).encode(),
        timeout=TIMEOUT,
    )


def make_group(server, gid: str, members: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert api(server, "PUT", f"/api/groups/{gid}", {"members": []}).status_code == 200
    for start in range(0, len(members), 2000):  # a request body is at most max_body
        add = {"add": members[start : start + 2000]}
        assert api(server, "POST", f"/api/groups/{gid}/members", add).status_code == 200


def open_ws(server, user: str) -> Any:  # type: ignore[no-untyped-def]
    return connect(server.ws_url(user), compression=None, open_timeout=TIMEOUT, max_queue=None)


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def nothing_comes(ws: ClientConnection, seconds: float = 0.5) -> None:
    with pytest.raises(TimeoutError):
        frame = await recv(ws, seconds)
        raise AssertionError(f"unexpected {frame}")


async def group_send(ws: ClientConnection, gid: str, body: Any, cid: str) -> None:
    await ws.send(json.dumps({"op": "send", "group": gid, "cid": cid, "body": body}))


def users_on(workers: int, prefix: str, per_worker: int) -> list[str]:
    """``per_worker`` users owned by each worker."""
    found: dict[int, list[str]] = {w: [] for w in range(workers)}
    i = 0
    while any(len(v) < per_worker for v in found.values()):
        user = f"{prefix}{i}"
        owner = owner_of(user, workers)
        if len(found[owner]) < per_worker:
            found[owner].append(user)
        i += 1
    return [u for w in range(workers) for u in found[w]]


async def test_fan_out_to_online_and_offline_members_on_every_worker(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3")
    members = users_on(3, "m", 4)  # 12 members, 4 on each worker
    online, offline = members[::2], members[1::2]
    sender = members[0]
    for gid in ("g0", "g1", "g2", "g3"):  # groups owned by different workers
        make_group(server, gid, members)
    assert len({owner_of(g, 3) for g in ("g0", "g1", "g2", "g3")}) == 3
    conns = {u: await open_ws(server, u) for u in online}
    acks = {}
    for n, gid in enumerate(("g0", "g1", "g2", "g3")):
        await group_send(conns[sender], gid, {"text": f"hello {gid}"}, f"c{n}")
        ack = await recv(conns[sender])
        assert ack["op"] == "ack" and ack["cid"] == f"c{n}"
        assert len(ack["id"]) == 20
        acks[gid] = ack
    # Every online member but the sender got each, live, with "group".
    for user in online[1:]:
        for gid in ("g0", "g1", "g2", "g3"):
            msg = await recv(conns[user])
            assert msg["op"] == "msg"
            assert (msg["from"], msg["to"], msg["group"]) == (sender, user, gid)
            assert msg["body"] == {"text": f"hello {gid}"}
            assert list(msg) == ["op", "id", "from", "to", "group", "ts", "body"]
            await conns[user].send(json.dumps({"op": "recv", "ids": [msg["id"]]}))
    await nothing_comes(conns[sender])  # not its own message, and no receipts
    # Offline members find them in their inbox, in order.
    for user in offline:
        async with open_ws(server, user) as ws:
            got = [await recv(ws) for _ in range(4)]
            assert [m["group"] for m in got] == ["g0", "g1", "g2", "g3"]
            ids = [m["id"] for m in got]
            assert ids == sorted(ids)
    for ws in conns.values():
        await ws.close()


async def test_non_member_unknown_group_and_bad_requests(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3")
    make_group(server, "club", ["alice", "bob"])
    async with open_ws(server, "mallory") as ws:
        for gid, cid in (("club", "x1"), ("nosuch", "x2"), ("club", "x3")):
            await group_send(ws, gid, "hi", cid)
        # Answers about different groups come in any order, as acks to different users do.
        errors = {frame["cid"]: frame for frame in [await recv(ws) for _ in range(3)]}
        assert errors["x1"] == {
            "op": "error",
            "cid": "x1",
            "code": "forbidden",
            "reason": "mallory is not a member of group club",
        }
        assert errors["x2"] == {
            "op": "error",
            "cid": "x2",
            "code": "bad_request",
            "reason": "unknown group nosuch",
        }
        assert errors["x3"]["code"] == "forbidden"
        await ws.send(
            json.dumps({"op": "send", "to": "a", "group": "club", "cid": "x4", "body": 1})
        )
        error = await recv(ws)
        assert (error["cid"], error["code"]) == ("x4", "bad_request")
    async with open_ws(server, "bob") as bob:
        await nothing_comes(bob)  # mallory's attempts stored nothing


async def test_membership_changes_take_effect_at_once(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3")
    make_group(server, "team", ["alice", "bob"])
    async with open_ws(server, "alice") as alice, open_ws(server, "carol") as carol:
        await group_send(carol, "team", 1, "c1")
        assert (await recv(carol))["code"] == "forbidden"
        api(server, "POST", "/api/groups/team/members", {"add": ["carol"]})
        await group_send(carol, "team", 2, "c2")
        assert (await recv(carol))["op"] == "ack"
        assert (await recv(alice))["body"] == 2
        api(server, "POST", "/api/groups/team/members", {"remove": ["alice"]})
        await group_send(carol, "team", 3, "c3")
        assert (await recv(carol))["op"] == "ack"
        await nothing_comes(alice)
        api(server, "DELETE", "/api/groups/team")
        await group_send(carol, "team", 4, "c4")
        assert (await recv(carol))["reason"] == "unknown group team"


async def test_the_only_member_is_acked_and_a_full_inbox_is_skipped(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "2", "--inbox-cap", "1")
    make_group(server, "solo", ["me"])
    async with open_ws(server, "me") as me:
        await group_send(me, "solo", 1, "s")
        assert (await recv(me))["op"] == "ack"
        await nothing_comes(me)
    make_group(server, "pair", ["me", "full", "free"])
    api(server, "POST", "/api/send", {"from": "x", "to": "full", "body": 0})  # full now
    async with open_ws(server, "me") as me:
        await group_send(me, "pair", 1, "p")
        assert (await recv(me))["op"] == "ack"  # not blocked by the full inbox
    async with open_ws(server, "free") as free:
        assert (await recv(free))["group"] == "pair"
    deadline = time.monotonic() + 10  # stats are published every 0.5 s
    while "roost_group_skipped_total 1" not in httpx.get(f"{server.http}/metrics").text:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_api_group_sends(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3")
    make_group(server, "news", ["a1", "a2", "a3"])
    async with open_ws(server, "a1") as a1:
        # "system" needs no membership; a user does.
        sent = await asyncio.to_thread(
            api, server, "POST", "/api/send", {"from": "system", "group": "news", "body": "x"}
        )
        assert sent.status_code == 200
        msg = await recv(a1)
        assert (msg["from"], msg["group"], msg["body"]) == ("system", "news", "x")
        sent = await asyncio.to_thread(
            api, server, "POST", "/api/send", {"from": "a2", "group": "news", "body": "y"}
        )
        assert sent.status_code == 200
        assert (await recv(a1))["from"] == "a2"
    async with open_ws(server, "a2") as a2:
        assert (await recv(a2))["from"] == "system"  # not its own "y"
        await nothing_comes(a2)


async def test_a_large_group_spans_chunks_and_workers(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "3", "--fsync", "normal")
    members = [f"big{i}" for i in range(3500)]  # several chunks per worker
    make_group(server, "big", members)
    watchers = [members[0], members[1234], members[3499], members[2]]
    conns = {u: await open_ws(server, u) for u in watchers}
    async with open_ws(server, "outsider") as outsider:
        # Unrelated 1:1 traffic goes on during the fan-out.
        await group_send(conns[members[0]], "big", {"text": "all"}, "b1")
        for i in range(20):
            await outsider.send(
                json.dumps({"op": "send", "to": "outsider", "cid": f"o{i}", "body": i})
            )
        seen = {"ack": 0, "msg": 0}
        while seen != {"ack": 20, "msg": 20}:
            frame = await recv(outsider)
            seen[frame["op"]] += 1
        assert (await recv(conns[members[0]]))["cid"] == "b1"
    for user in watchers[1:]:
        assert (await recv(conns[user]))["body"] == {"text": "all"}
    for ws in conns.values():
        await ws.close()

    def stored() -> int:
        return int(httpx.get(f"{server.http}/api/stats").json()["totals"]["inbox_items"])

    deadline = time.monotonic() + 10
    while stored() < 3499 + 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert stored() >= 3499  # every member but the sender holds it


async def test_no_ack_unless_every_members_inbox_committed(make_server):  # type: ignore[no-untyped-def]
    """A member's worker dies during the fan-out: the sender gets
    ``internal`` and no ack; a resend once it is back is acked."""
    server = make_server("--workers", "3")
    victim = 2
    sender = next(f"s{i}" for i in range(100) if owner_of(f"s{i}", 3) == 0)
    gid = next(f"g{i}" for i in range(100) if owner_of(f"g{i}", 3) == 1)
    members = [sender, *users_on(3, "mm", 3)]
    make_group(server, gid, members)
    async with open_ws(server, sender) as ws:
        # Open every link, so the victim's death closes the ones it accepted.
        for i in range(3):
            await group_send(ws, gid, i, f"warm{i}")
            assert (await recv(ws))["op"] == "ack"
        pid = httpx.get(f"{server.http}/api/stats").json()["workers"][victim]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            await group_send(ws, gid, "lost?", "c1")
            await nothing_comes(ws, 1.0)  # no ack while one member's inbox waits
            os.kill(pid, signal.SIGKILL)
            error = await recv(ws)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert (error["op"], error["cid"], error["code"]) == ("error", "c1", "internal")
        # Once the worker is back, the resend is acked.
        deadline = time.monotonic() + 20
        while True:
            await group_send(ws, gid, "again", "c2")
            frame = await recv(ws)
            if frame["op"] == "ack":
                break
            assert frame["code"] == "internal"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    # Every member has the resend (the first may be there too: at least once).
    for member in members[1:]:
        async with open_ws(server, member) as ws:
            bodies = []
            while "again" not in bodies:
                bodies.append((await recv(ws))["body"])


async def test_with_roost_client(make_server):  # type: ignore[no-untyped-def]
    from roost.client import Message, ServerError
    from roost.client import connect as client_connect

    server = make_server("--workers", "2")
    make_group(server, "pals", ["ann", "ben"])
    async with (
        client_connect(server.url, server.token("ann")) as ann,
        client_connect(server.url, server.token("ben")) as ben,
    ):
        ack = await ann.send_group("pals", {"text": "hi"})
        item = await ben.recv_item()
        assert isinstance(item, Message)
        assert (item.sender, item.group, item.body) == ("ann", "pals", {"text": "hi"})
        assert ack.id and item.id != ack.id
        with pytest.raises(ServerError) as info:
            await ann.send_group("nobody-here", 1)
        assert info.value.code == "bad_request"
        online = await ann.presence(["ben", "zed"])
        assert online == {"ben": {"online": True}, "zed": {"online": False, "last_seen": None}}


def test_group_message_ids_never_collide_with_the_stores():
    from roost.groups import _GroupIds
    from roost.store.base import IdGenerator

    store, groups = IdGenerator(7), _GroupIds(7)
    ids = [store.next(1000) for _ in range(1000)] + [groups.next(1000) for _ in range(1000)]
    assert len(set(ids)) == 2000
    assert all(len(i) == 20 and i.endswith("007") for i in ids)
    group_ids = [groups.next(999), groups.next(1001)]  # the clock went back, then forward
    assert group_ids == sorted(group_ids)
    # Past the sequence's top the millisecond moves on, still in the upper half.
    groups._seq = 0xFFFFF
    assert groups.next(1001)[12:17] == "80000"
