"""The backend HTTP API against a real multi-worker server: every endpoint,
every error, and sends from the API reaching users (docs/api.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from roost.workers.routing import owner_of

TIMEOUT = 15


def api_key(server) -> str:  # type: ignore[no-untyped-def]
    return (server.data_dir / "api-key").read_text().strip()


def api(server, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {api_key(server)}", **kwargs.pop("headers", {})}
    if body is not None:
        kwargs["content"] = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.request(method, f"{server.http}{path}", headers=headers, timeout=TIMEOUT, **kwargs)


def open_ws(server, user: str) -> Any:  # type: ignore[no-untyped-def]
    return connect(server.ws_url(user), compression=None, open_timeout=TIMEOUT, max_queue=None)


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


@pytest.fixture
def server(make_server):  # type: ignore[no-untyped-def]
    return make_server("--workers", "3")


# ---- keys ----------------------------------------------------------------------------


def test_the_api_key_is_generated_once_with_mode_0600(server):  # type: ignore[no-untyped-def]
    path = server.data_dir / "api-key"
    assert path.stat().st_mode & 0o777 == 0o600
    key = api_key(server)
    assert len(key) >= 32
    server.restart()
    assert api_key(server) == key
    assert api(server, "GET", "/api/presence?users=a").status_code == 200


def test_the_api_key_from_a_file_and_from_the_environment(make_server, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    key_file = tmp_path / "key"
    key_file.write_text("from-the-file\n")
    server = make_server("--workers", "2", "--api-key-file", str(key_file))
    url = f"{server.http}/api/presence?users=a"
    assert httpx.get(url, headers={"Authorization": "Bearer from-the-file"}).status_code == 200
    assert not (server.data_dir / "api-key").exists()
    monkeypatch.setenv("ROOST_API_KEY", "from-the-env")
    server = make_server("--workers", "2")
    url = f"{server.http}/api/presence?users=a"
    assert httpx.get(url, headers={"Authorization": "Bearer from-the-env"}).status_code == 200
    assert httpx.get(url, headers={"Authorization": "Bearer x"}).status_code == 401


# ---- errors --------------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/api/send", {"from": "a", "to": "b", "body": 1}),
    ("PUT", "/api/groups/g", {"members": ["a"]}),
    ("POST", "/api/groups/g/members", {"add": ["a"]}),
    ("GET", "/api/groups/g", None),
    ("DELETE", "/api/groups/g", None),
    ("GET", "/api/presence?users=a,b", None),
    ("DELETE", "/api/users/a/connection", None),
]


def test_401_without_the_right_key(server):  # type: ignore[no-untyped-def]
    key = api_key(server)
    for authorization in [None, "", "Bearer", "Bearer wrong", "Basic abc", f"Basic {key}", key]:
        for method, path, body in ENDPOINTS:
            headers = {} if authorization is None else {"Authorization": authorization}
            response = httpx.request(
                method,
                f"{server.http}{path}",
                headers=headers,
                content=None if body is None else json.dumps(body).encode(),
                timeout=TIMEOUT,
            )
            assert error_of(response, 401) == "missing or invalid API key"
            assert response.headers["www-authenticate"].startswith("Bearer")
    # Nothing was done: the group does not exist.
    assert api(server, "GET", "/api/groups/g").status_code == 404
    # The scheme is case-insensitive (RFC 9110 §11.1).
    lower = {"Authorization": f"bearer {key}"}
    assert httpx.get(f"{server.http}/api/groups/g", headers=lower).status_code == 404


def test_404_for_unknown_paths_and_groups(server):  # type: ignore[no-untyped-def]
    for path in ("/api/nope", "/api/groups", "/api/groups/g/x", "/api/users/a", "/api/send/x"):
        assert error_of(api(server, "GET", path), 404) == "not found"
    assert error_of(api(server, "GET", "/api/groups/nope"), 404) == "no group nope"
    assert error_of(api(server, "DELETE", "/api/groups/nope"), 404) == "no group nope"
    edit = api(server, "POST", "/api/groups/nope/members", {"add": ["a"]})
    assert error_of(edit, 404) == "no group nope"


def test_405_with_allow(server):  # type: ignore[no-untyped-def]
    response = api(server, "GET", "/api/send")
    error_of(response, 405)
    assert response.headers["allow"] == "POST"
    response = api(server, "POST", "/api/groups/g")
    error_of(response, 405)
    assert response.headers["allow"] == "PUT, GET, DELETE"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "JSON"),
        (b"{", "JSON"),
        (b"[]", "object"),
        ({"to": "b", "body": 1}, "from"),
        ({"from": "a", "to": "b"}, "body"),
        ({"from": "a", "body": 1}, '"to" and "group"'),
        ({"from": "a", "to": "b", "group": "g", "body": 1}, '"to" and "group"'),
        ({"from": "bad id", "to": "b", "body": 1}, "from"),
        ({"from": "a", "to": "b!", "body": 1}, "to"),
        ({"from": "a", "group": "", "body": 1}, "group"),
        ({"from": "a", "to": "b", "body": 1, "extra": 1}, "extra"),
    ],
)
def test_400_for_bad_sends(server, body, words):  # type: ignore[no-untyped-def]
    assert words in error_of(api(server, "POST", "/api/send", body), 400)


def test_404_for_a_send_to_an_unknown_group_and_403_for_a_non_member(server):  # type: ignore[no-untyped-def]
    send = {"from": "alice", "group": "nogroup", "body": 1}
    assert error_of(api(server, "POST", "/api/send", send), 404) == "unknown group nogroup"
    assert api(server, "PUT", "/api/groups/club", {"members": ["bob"]}).status_code == 200
    send = {"from": "alice", "group": "club", "body": 1}
    assert error_of(api(server, "POST", "/api/send", send), 403) == (
        "alice is not a member of group club"
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "words"),
    [
        ("PUT", "/api/groups/g", {}, "members"),
        ("PUT", "/api/groups/g", {"members": "a"}, "members"),
        ("PUT", "/api/groups/g", {"members": ["ok", "not ok"]}, "members"),
        ("PUT", "/api/groups/bad%20id", {"members": []}, "bad group id"),
        ("PUT", "/api/groups/" + "x" * 65, {"members": []}, "bad group id"),
        ("GET", "/api/groups/a%2Fb", None, "bad group id"),
        ("POST", "/api/groups/g/members", {"add": [1]}, "add"),
        ("POST", "/api/groups/g/members", {"remove": ["é"]}, "remove"),
        ("POST", "/api/groups/g/members", {"drop": []}, "drop"),
        ("GET", "/api/presence", None, "users"),
        ("GET", "/api/presence?users=", None, "users"),
        ("GET", "/api/presence?users=a,,b", None, "bad user id"),
        ("GET", "/api/presence?users=" + ",".join(f"u{i}" for i in range(257)), None, "256"),
        ("DELETE", "/api/users/a%20b/connection", None, "bad user id"),
        ("GET", "/api/groups/g?x=1", None, "unknown query parameter 'x'"),
        ("GET", "/api/presence?users=a&b=1", None, "unknown query parameter 'b'"),
    ],
)
def test_400_for_bad_requests(server, method, path, body, words):  # type: ignore[no-untyped-def]
    assert words in error_of(api(server, method, path, body), 400)


def test_400_for_a_group_over_the_member_limit(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "2", "--group-max-members", "3")
    members = {"members": ["a", "b", "c", "d"]}
    assert "at most 3" in error_of(api(server, "PUT", "/api/groups/g", members), 400)
    assert api(server, "PUT", "/api/groups/g", {"members": ["a", "b"]}).status_code == 200
    too_many = {"add": ["c", "d"]}
    assert "at most 3" in error_of(api(server, "POST", "/api/groups/g/members", too_many), 400)
    assert api(server, "GET", "/api/groups/g").json()["members"] == ["a", "b"]


def test_413_for_a_body_over_max_body(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "2", "--max-body", "1000")
    send = {"from": "a", "to": "b", "body": "x" * 1000}
    assert "limit is 1000" in error_of(api(server, "POST", "/api/send", send), 413)
    group = {"members": [f"user{i}" for i in range(200)]}
    error_of(api(server, "PUT", "/api/groups/g", group), 413)


def test_411_for_a_chunked_body(server):  # type: ignore[no-untyped-def]
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"from":"a",'
        yield b'"to":"b","body":1}'

    response = api(server, "POST", "/api/send", content=chunks())
    error_of(response, 411)


def test_409_for_a_full_inbox(make_server):  # type: ignore[no-untyped-def]
    server = make_server("--workers", "2", "--inbox-cap", "2")
    for _ in range(2):
        assert api(server, "POST", "/api/send", {"from": "a", "to": "b", "body": 1}).is_success
    full = api(server, "POST", "/api/send", {"from": "a", "to": "b", "body": 1})
    assert error_of(full, 409) == "the inbox of b is full"


def test_503_when_the_owner_dies_before_answering(make_server):  # type: ignore[no-untyped-def]
    """The owner of the user or group dies with requests pending: they fail
    with 503 on the worker that forwarded them (nothing was acked)."""
    server = make_server("--workers", "2")
    victim = 1
    user = next(f"v{i}" for i in range(100) if owner_of(f"v{i}", 2) == victim)
    gid = next(f"g{i}" for i in range(100) if owner_of(f"g{i}", 2) == victim)
    # Open the links both ways: a dying worker closes the links it accepted.
    everyone = ",".join(f"u{i}" for i in range(20))
    for _ in range(10):
        assert api(server, "GET", f"/api/presence?users={everyone}").status_code == 200
    pid = httpx.get(f"{server.http}/api/stats").json()["workers"][victim]["pid"]
    requests = [
        ("POST", "/api/send", {"from": "a", "to": user, "body": 1}),
        ("GET", f"/api/groups/{gid}", None),
        ("DELETE", f"/api/users/{user}/connection", None),
    ] * 12
    os.kill(pid, signal.SIGSTOP)  # alive but mute: what is forwarded to it waits
    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(api, server, *request) for request in requests]
            time.sleep(1.0)
            os.kill(pid, signal.SIGKILL)
            responses = [f.result() for f in futures]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    failed = {r.request.url.path for r in responses if r.status_code == 503}
    # Those the dying worker had accepted itself wait in the kept listener's
    # backlog and are answered by its successor.
    assert failed == {"/api/send", f"/api/groups/{gid}", f"/api/users/{user}/connection"}
    for response in responses:
        if response.status_code == 503:
            assert "restarting" in response.json()["error"]
        else:
            assert response.status_code in (200, 404), response.text


# ---- what the API does ---------------------------------------------------------------


def test_groups_crud(server):  # type: ignore[no-untyped-def]
    put = api(server, "PUT", "/api/groups/team", {"members": ["carol", "alice", "bob", "alice"]})
    assert put.status_code == 200
    assert put.json() == {"group": "team", "members": ["alice", "bob", "carol"]}
    assert api(server, "GET", "/api/groups/team").json() == put.json()
    edit = api(server, "POST", "/api/groups/team/members", {"add": ["dave"], "remove": ["bob"]})
    assert edit.json() == {"group": "team", "members": ["alice", "carol", "dave"]}
    assert api(server, "POST", "/api/groups/team/members", {}).json() == edit.json()
    assert api(server, "GET", "/api/groups/team").json() == edit.json()
    put = api(server, "PUT", "/api/groups/team", {"members": []})
    assert put.json() == {"group": "team", "members": []}
    deleted = api(server, "DELETE", "/api/groups/team")
    assert deleted.status_code == 204 and deleted.content == b""
    assert api(server, "GET", "/api/groups/team").status_code == 404
    # Groups are durable.
    api(server, "PUT", "/api/groups/kept", {"members": ["x", "y"]})
    server.restart()
    assert api(server, "GET", "/api/groups/kept").json()["members"] == ["x", "y"]


async def test_api_sends_reach_users_across_workers(server):  # type: ignore[no-untyped-def]
    users = [f"api{i}" for i in range(9)]
    assert len({owner_of(u, 3) for u in users}) == 3
    online = users[:5]
    conns = {u: await open_ws(server, u) for u in online}
    sent: dict[str, dict[str, Any]] = {}
    for user in users:
        body = {"text": f"hello {user}"}
        response = await asyncio.to_thread(
            api, server, "POST", "/api/send", {"from": "system", "to": user, "body": body}
        )
        assert response.status_code == 200, response.text
        sent[user] = response.json()
        assert len(sent[user]["id"]) == 20 and isinstance(sent[user]["ts"], int)
    for user in online:
        msg = await recv(conns[user])
        assert msg == {
            "op": "msg",
            "id": sent[user]["id"],
            "from": "system",
            "to": user,
            "ts": sent[user]["ts"],
            "body": {"text": f"hello {user}"},
        }
        await conns[user].send(json.dumps({"op": "recv", "ids": [msg["id"]]}))
    for user in users[5:]:  # offline: waiting in the inbox
        async with open_ws(server, user) as ws:
            assert (await recv(ws))["id"] == sent[user]["id"]
    # From a user, a send is like theirs: the recipient's confirm makes a receipt.
    async with open_ws(server, "sender1") as sender:
        response = await asyncio.to_thread(
            api, server, "POST", "/api/send", {"from": "sender1", "to": "api0", "body": 2}
        )
        msg = await recv(conns["api0"])
        assert msg["from"] == "sender1" and msg["id"] == response.json()["id"]
        await conns["api0"].send(json.dumps({"op": "recv", "ids": [msg["id"]]}))
        receipt = await recv(sender)
        assert receipt["op"] == "receipt" and receipt["ref"] == msg["id"]
    for ws in conns.values():
        await ws.close()


async def test_disconnect_closes_with_4003_on_the_owner(server):  # type: ignore[no-untyped-def]
    users = [f"kick{i}" for i in range(6)]
    for user in users:
        ws = await open_ws(server, user)
        response = await asyncio.to_thread(api, server, "DELETE", f"/api/users/{user}/connection")
        assert response.json() == {"user": user, "disconnected": True}
        with pytest.raises(ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 4003
        assert ws.close_reason == "disconnected by the API"
    response = await asyncio.to_thread(api, server, "DELETE", "/api/users/nobody/connection")
    assert response.json() == {"user": "nobody", "disconnected": False}


def test_openapi_needs_no_key(server):  # type: ignore[no-untyped-def]
    response = httpx.get(f"{server.http}/api/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/api/send",
        "/api/groups/{gid}",
        "/api/groups/{gid}/members",
        "/api/presence",
        "/api/users/{user}/connection",
        "/api/openapi.json",
    }


def test_a_request_that_closes_before_its_answer_costs_nothing(server):  # type: ignore[no-untyped-def]
    body = json.dumps({"from": "a", "to": "b", "body": 1}).encode()
    request = (
        f"POST /api/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api_key(server)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(request)
    # The server is still fine, and the messages were stored all the same.
    assert httpx.get(f"{server.http}/healthz").status_code == 200
    assert api(server, "POST", "/api/send", {"from": "a", "to": "b", "body": 2}).is_success
