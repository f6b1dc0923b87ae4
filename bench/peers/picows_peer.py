"""Protocol v1 on picows 2 with its recommended fast settings.

uvloop, no compression (picows has none), no auto ping; one ``WSListener`` per
connection receiving frames by callback, no task per connection.

    python bench/peers/picows_peer.py --port 8082 --data-dir D
"""

from __future__ import annotations

import asyncio
import signal

import uvloop
from hub import BACKLOG, MAX_FRAME, AuthError, Hub, authenticate, error_body, parse_args
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)


class _Listener(WSListener):
    __slots__ = ("hub", "parts", "transport", "user")

    def __init__(self, hub: Hub, user: str) -> None:
        self.hub = hub
        self.user = user
        self.transport: WSTransport | None = None
        self.parts: list[bytes] | None = None  # a fragmented text message in flight

    # Peer
    def send_text(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.send(WSMsgType.TEXT, data)

    def close(self, code: int, reason: str) -> None:
        if self.transport is not None:
            self.transport.send_close(WSCloseCode(code), reason.encode())
            self.transport.disconnect()

    # WSListener
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.hub.attach(self.user, self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.hub.detach(self.user, self)
        self.transport = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT:
            if frame.fin:
                self.hub.handle(self.user, self, frame.get_payload_as_bytes())
            else:
                self.parts = [frame.get_payload_as_bytes()]
        elif kind == WSMsgType.CONTINUATION and self.parts is not None:
            self.parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                data, self.parts = b"".join(self.parts), None
                self.hub.handle(self.user, self, data)
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind == WSMsgType.BINARY:
            self.close(1003, "text only")


async def main() -> None:
    args = parse_args("picows_peer")
    hub = Hub(args.drop_every, args.dup_every)

    def listener_factory(request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
        try:
            user = authenticate(args.secret, request.path.decode("latin-1"))
        except AuthError as exc:
            return _json_response(exc.status, exc.reason)
        except LookupError:
            return _json_response(404, "not found")
        return _Listener(hub, user)

    server = await ws_create_server(
        listener_factory,
        args.host,
        args.port,
        enable_auto_ping=False,
        max_frame_size=MAX_FRAME,
        backlog=BACKLOG,
    )
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on ws://{args.host}:{port}/ws (picows)", flush=True)
    await stop
    # Exit without waiting for connections to close: a benchmark peer has no
    # state worth a graceful shutdown.
    server.close()


def _json_response(status: int, reason: str) -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse.create_error_response(
        status, error_body(reason), {"Content-Type": "application/json"}
    )
    return WSUpgradeResponseWithListener(response, None)


if __name__ == "__main__":
    uvloop.run(main())
