"""Protocol v1 on websockets 17 (asyncio API) with its recommended fast settings.

uvloop, no permessage-deflate, no keepalive ping; one handler task per
connection, as websockets is meant to be used. Deliveries to other connections
go through ``broadcast``, the library's way to write without awaiting.

    python bench/peers/websockets_peer.py --port 8081 --data-dir D
"""

from __future__ import annotations

import asyncio
import signal
from http import HTTPStatus

import uvloop
from hub import BACKLOG, MAX_FRAME, AuthError, Hub, authenticate, error_body, parse_args
from websockets.asyncio.server import Request, Response, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed


class _Peer:
    __slots__ = ("closing", "ws")

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.closing: asyncio.Task[None] | None = None  # kept so the task is not collected

    def send_text(self, data: bytes) -> None:
        broadcast((self.ws,), data, text=True)

    def close(self, code: int, reason: str) -> None:
        self.closing = asyncio.ensure_future(self.ws.close(code, reason))


async def main() -> None:
    args = parse_args("websockets_peer")
    hub = Hub(args.drop_every, args.dup_every)

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        try:
            conn.roost_user = authenticate(args.secret, request.path)  # type: ignore[attr-defined]
        except AuthError as exc:
            return _json_response(conn, exc.status, exc.reason)
        except LookupError:
            return _json_response(conn, 404, "not found")
        return None

    async def handler(ws: ServerConnection) -> None:
        user: str = ws.roost_user  # type: ignore[attr-defined]
        peer = _Peer(ws)
        hub.attach(user, peer)
        try:
            async for message in ws:
                if isinstance(message, str):
                    hub.handle(user, peer, message.encode())
                else:
                    await ws.close(1003, "text only")
        except ConnectionClosed:
            pass
        finally:
            hub.detach(user, peer)

    async with serve(
        handler,
        args.host,
        args.port,
        compression=None,
        ping_interval=None,
        max_size=MAX_FRAME,
        process_request=process_request,
        server_header=None,
        backlog=BACKLOG,
    ) as server:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
        port = server.sockets[0].getsockname()[1]
        print(f"listening on ws://{args.host}:{port}/ws (websockets)", flush=True)
        await stop


def _json_response(conn: ServerConnection, status: int, reason: str) -> Response:
    response = conn.respond(HTTPStatus(status), "")
    response.body = error_body(reason)
    # Headers is a multidict: assigning would add a second value.
    del response.headers["Content-Type"], response.headers["Content-Length"]
    response.headers["Content-Type"] = "application/json"
    response.headers["Content-Length"] = str(len(response.body))
    return response


if __name__ == "__main__":
    uvloop.run(main())
