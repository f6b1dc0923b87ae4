"""``roost serve``: wire the store, the engine and the hub together, and run.

Rules of shutdown (SIGTERM or SIGINT), in this order, so that nothing acked is
lost and a deploy does not become a reconnect storm:
1. stop accepting;
2. commit what is pending: every op received so far gets its ack;
3. close every connection with 1001 and a reconnect-with-jitter hint;
4. wait for the close handshakes (``close_timeout``), then exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

import uvloop

from roost import __version__
from roost.auth import load_secret
from roost.config import Settings
from roost.engine.loop import Engine, listen_socket
from roost.hub import Hub
from roost.proto.frames import CloseCode
from roost.store.commit import GroupCommit
from roost.store.sqlite import SQLiteInboxStore

log = logging.getLogger("roost")

SHUTDOWN_REASON = "server shutting down; reconnect after a random delay"


async def serve(settings: Settings) -> None:
    secret = load_secret(settings.data_dir, settings.secret_file)
    store = SQLiteInboxStore(
        settings.data_dir / "inbox-000.db", inbox_cap=settings.inbox_cap, fsync=settings.fsync
    )
    hub = Hub(settings, secret)
    commit = GroupCommit(store, hub.on_committed)
    engine = Engine(settings, hub)
    hub.bind(engine, commit)
    engine.start(listen_socket(settings))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    _banner(settings)
    # Everything allocated so far lives as long as the server: keep the
    # collector from scanning it again and again as connections come and go.
    gc.freeze()
    await stop.wait()

    log.info("shutting down: draining")
    engine.stop_accepting()
    await commit.drain()
    engine.close_all(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
    await engine.wait_closed(settings.close_timeout)
    await commit.drain()
    commit.close()
    engine.shutdown()
    log.info("stopped")


def _banner(settings: Settings) -> None:
    scheme_host = f"{settings.host}:{settings.port}"
    lines = [f"roost {__version__} listening on ws://{scheme_host}/ws"]
    if settings.demo:
        lines.append(f"demo page: http://{scheme_host}/")
    lines.append("settings:")
    lines.extend(f"  {name} = {value}" for name, value in settings.describe())
    print("\n".join(lines), flush=True)


def run(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    uvloop.run(serve(settings))
    return 0
