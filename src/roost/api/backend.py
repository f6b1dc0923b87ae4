"""The backend HTTP API (docs/api.md): the app's server sends, manages groups,
reads presence and disconnects users.

Rules:
- Every endpoint but /api/openapi.json needs ``Authorization: Bearer <api
  key>``; the key is compared in constant time.
- Whatever worker accepts the request serves it. What belongs to an owner
  (a user's connection and presence, a group) is asked of that owner over
  the links (``Hub.call``) and the request is answered when the owner
  replies: ``__call__`` returns None and the answer goes out with
  ``Engine.send_http``.
- ``POST /api/send`` takes the same path as a client's send, with an HTTP
  request as its origin (a ``Waiter``): 200 once the message is committed,
  as a client's ack. ``from`` may be any user, or ``system``.
- Errors are ``{"error": ...}``: 400 a bad request, 401 no valid key, 403 a
  non-member sending to a group, 404 no such group (also for a send to it)
  or path, 409 a full
  inbox, 413 a body over ``max_body`` (the engine's parser), 503 an owner
  restarting or a store failure.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote

import msgspec

from roost.api.openapi import document
from roost.auth import is_user_id
from roost.config import Settings
from roost.engine.table import Conn
from roost.groups import UNKNOWN_GROUP
from roost.proto.handshake import Request, http_response, json_error
from roost.proto.messages import MAX_PRESENCE_USERS, encode
from roost.store.base import SYSTEM_SENDER
from roost.waiter import Waiter

if TYPE_CHECKING:
    from roost.hub import Hub

UserId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._@-]{1,64}\Z")]
_ID_RULE = "1-64 characters from [A-Za-z0-9._@-]"
_STATUS = {
    "bad_request": 400,
    "forbidden": 403,
    "inbox_full": 409,
    "too_large": 413,
    "rate_limited": 429,
    "internal": 503,
}
_RESTARTING = "its worker is restarting; retry"


class _SendRequest(msgspec.Struct, forbid_unknown_fields=True):
    sender: UserId = msgspec.field(name="from")
    body: msgspec.Raw
    to: UserId | None = None
    group: UserId | None = None


class _PutGroup(msgspec.Struct, forbid_unknown_fields=True):
    members: list[UserId]


class _EditGroup(msgspec.Struct, forbid_unknown_fields=True):
    add: list[UserId] = []
    remove: list[UserId] = []


class HttpReply(Waiter):
    """An HTTP request waiting for its send to be committed."""

    __slots__ = ("conn", "hub")

    def __init__(self, hub: Hub, conn: Conn) -> None:
        self.hub = hub
        self.conn = conn

    def acked(self, item_id: str, ts: int) -> None:
        self.hub.engine.send_http(self.conn, http_response(200, encode({"id": item_id, "ts": ts})))

    def failed(self, code: str, reason: str) -> None:
        status = _STATUS.get(code, 503)
        if reason.startswith(UNKNOWN_GROUP):  # bad_request on a WebSocket; a 404 here
            status = 404
        self.hub.engine.send_http(self.conn, json_error(status, reason))


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Route = Callable[[Conn, Request, list[str]], "bytes | None"]


class BackendApi:
    def __init__(self, settings: Settings, api_key: bytes, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self._api_key = api_key
        self._openapi = encode(document(settings.group_max_members))
        # (path pattern, {method: route}); "*" is one path segment, a parameter
        self._routes: list[tuple[tuple[str, ...], dict[str, Route]]] = [
            (("api", "send"), {"POST": self._send}),
            (
                ("api", "groups", "*"),
                {"PUT": self._put_group, "GET": self._get_group, "DELETE": self._delete_group},
            ),
            (("api", "groups", "*", "members"), {"POST": self._edit_group}),
            (("api", "presence"), {"GET": self._presence}),
            (("api", "users", "*", "connection"), {"DELETE": self._disconnect}),
        ]

    def __call__(self, conn: Conn, request: Request) -> bytes | None:
        if request.path == "/api/openapi.json":
            if request.method != "GET":
                return json_error(405, "method not allowed", (("Allow", "GET"),))
            return http_response(200, self._openapi)
        found = self._match(request.path)
        if found is None:
            return json_error(404, "not found")
        methods, params = found
        route = methods.get(request.method)
        if route is None:
            return json_error(405, "method not allowed", (("Allow", ", ".join(methods)),))
        if not self._authorized(request):
            return json_error(
                401, "missing or invalid API key", (("WWW-Authenticate", 'Bearer realm="roost"'),)
            )
        known = ("users",) if route == self._presence else ()
        unknown = [name for name in request.query if name not in known]
        if unknown:
            return json_error(400, f"unknown query parameter {unknown[0]!r}")
        try:
            return route(conn, request, params)
        except BadRequest as exc:
            return json_error(exc.status, exc.message)

    def _match(self, path: str) -> tuple[dict[str, Route], list[str]] | None:
        parts = path.strip("/").split("/")
        for pattern, methods in self._routes:
            if len(pattern) != len(parts):
                continue
            params = []
            for want, got in zip(pattern, parts, strict=True):
                if want == "*":
                    params.append(unquote(got))
                elif want != got:
                    break
            else:
                return methods, params
        return None

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":  # RFC 9110 §11.1: the scheme is case-insensitive
            return False
        return hmac.compare_digest(token.strip().encode("latin-1"), self._api_key)

    # ---- endpoints ---------------------------------------------------------------

    def _send(self, conn: Conn, request: Request, params: list[str]) -> bytes | None:
        send = _decode(request.body, _SendRequest)
        if (send.to is None) is (send.group is None):
            raise BadRequest(400, 'a send needs exactly one of "to" and "group"')
        if len(send.body) > self.settings.max_body:
            raise BadRequest(
                413, f"body is {len(send.body)} bytes, the limit is {self.settings.max_body}"
            )
        reply = HttpReply(self.hub, conn)
        body = bytes(send.body)
        if send.to is not None:
            self.hub.send_direct(reply, None, send.to, send.sender, body)
        else:
            self.hub.stats.messages_in += 1
            check = send.sender != SYSTEM_SENDER
            self.hub.send_group(reply, None, send.group or "", send.sender, body, check)
        return None

    def _put_group(self, conn: Conn, request: Request, params: list[str]) -> bytes | None:
        gid = _id(params[0], "group id")
        members = sorted(set(_decode(request.body, _PutGroup).members))
        limit = self.settings.group_max_members
        if len(members) > limit:
            raise BadRequest(400, f"a group holds at most {limit} members")
        return self._group_call(conn, "put", gid, [members])

    def _get_group(self, conn: Conn, request: Request, params: list[str]) -> bytes | None:
        return self._group_call(conn, "get", _id(params[0], "group id"), [])

    def _delete_group(self, conn: Conn, request: Request, params: list[str]) -> bytes | None:
        return self._group_call(conn, "delete", _id(params[0], "group id"), [])

    def _edit_group(self, conn: Conn, request: Request, params: list[str]) -> bytes | None:
        gid = _id(params[0], "group id")
        edit = _decode(request.body or b"{}", _EditGroup)
        return self._group_call(
            conn, "edit", gid, [sorted(set(edit.add)), sorted(set(edit.remove))]
        )

    def _group_call(self, conn: Conn, action: str, gid: str, args: list[Any]) -> bytes | None:
        def reply(result: list[Any] | None) -> None:
            if result is None:
                response = json_error(503, f"group {gid}: {_RESTARTING}")
            else:
                status, body = result
                response = http_response(status, b"" if body is None else encode(body))
            self.hub.engine.send_http(conn, response)

        self.hub.call(self.hub.owner(gid), "group", [action, gid, args], reply)
        return None

    def _presence(self, conn: Conn, request: Request, params: list[str]) -> bytes | None:
        text = request.query.get("users")
        if not text:
            raise BadRequest(400, f"users: 1-{MAX_PRESENCE_USERS} user ids, comma-separated")
        users = text.split(",")
        if len(users) > MAX_PRESENCE_USERS:
            raise BadRequest(400, f"users: at most {MAX_PRESENCE_USERS} user ids")
        for user in users:
            _id(user, "user id")

        def reply(answer: dict[str, Any]) -> None:
            self.hub.engine.send_http(conn, http_response(200, encode({"users": answer})))

        self.hub.presence.query(users, reply)
        return None

    def _disconnect(self, conn: Conn, request: Request, params: list[str]) -> bytes | None:
        user = _id(params[0], "user id")

        def reply(result: bool | None) -> None:
            if result is None:
                response = json_error(503, f"user {user}: {_RESTARTING}")
            else:
                response = http_response(200, encode({"user": user, "disconnected": result}))
            self.hub.engine.send_http(conn, response)

        self.hub.call(self.hub.owner(user), "disconnect", user, reply)
        return None


def _id(value: str, what: str) -> str:
    if not is_user_id(value):
        raise BadRequest(400, f"bad {what} {value!r}: {_ID_RULE}")
    return value


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(400, str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(400, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(400, "JSON nested too deeply") from None
