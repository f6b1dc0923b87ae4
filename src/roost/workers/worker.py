"""One worker process: its event loop, its share of users, its inbox file.

Rules of shutdown (SIGTERM from the supervisor), in this order, so that
nothing acked is lost and a deploy does not become a reconnect storm:
1. stop accepting;
2. commit what is pending, so every op received so far gets its answer;
3. close every connection with 1001 and a reconnect-with-jitter hint;
4. wait for the close handshakes (``close_timeout``), then exit.
An op whose answer never came (its owner was gone) was not acked, and the
client sends it again: correctness never depends on the drain finishing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import sqlite3
import time
from dataclasses import dataclass

import uvloop

from roost.api.backend import BackendApi
from roost.api.http import HttpApi
from roost.auth import load_api_key, load_push_secret, load_secret
from roost.config import Settings
from roost.engine.loop import Engine
from roost.errors import ConfigError
from roost.hub import Hub
from roost.proto.frames import CloseCode
from roost.push.webhook import WebhookNotifier
from roost.store.commit import GroupCommit
from roost.store.sqlite import SQLiteInboxStore
from roost.workers.links import Links
from roost.workers.stats import SharedStats

log = logging.getLogger("roost.worker")

SHUTDOWN_REASON = "server shutting down; reconnect after a random delay"
PUBLISH_INTERVAL = 0.5  # seconds between stats publications
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Place:
    """A worker's place among its siblings, and what the supervisor made for it
    before forking."""

    index: int  # this worker, 0..workers-1; also its inbox file and id shard
    workers: int  # how many share the users
    namespace: str  # names the link addresses of this server's workers
    stats: SharedStats  # the shared rows; this worker writes row ``index``
    listener: socket.socket  # its SO_REUSEPORT listening socket
    link_listener: socket.socket  # where its peers connect


async def serve_worker(settings: Settings, place: Place) -> None:
    index, workers, stats = place.index, place.workers, place.stats
    secret = load_secret(settings.data_dir, settings.secret_file)
    hub = Hub(settings, secret, index, workers)
    path = settings.data_dir / f"inbox-{index:03d}.db"
    try:
        store = SQLiteInboxStore(
            path,
            inbox_cap=settings.inbox_cap,
            fsync=settings.fsync,
            shard=index,
            is_local=hub.owns,
        )
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open {path}: {exc}") from None
    commit = GroupCommit(store, hub.on_committed)
    engine = Engine(settings, hub)
    links = Links(
        index, place.namespace, hub.on_link_message, hub.on_undeliverable, hub.on_link_down
    )
    hub.bind(engine, commit, links)
    api_key = load_api_key(settings.data_dir, settings.api_key_file)
    hub.on_http = HttpApi(settings, secret, stats, BackendApi(settings, api_key, hub))
    if settings.push_webhook:
        push_secret = load_push_secret(settings.data_dir, settings.push_secret_file)
        hub.push = WebhookNotifier(settings, push_secret, hub.online.__contains__)
        hub.push.start()
    links.start(place.link_listener)
    engine.start(place.listener)

    loop = asyncio.get_running_loop()
    started = int(time.time())

    def publish() -> None:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * _PAGE
        s = hub.stats
        values = {
            "pid": os.getpid(),
            "started_unix": started,
            "connections": len(hub.online),
            "messages_in": s.messages_in,
            "messages_out": s.messages_out,
            "acks": s.acks,
            "receipts": s.receipts,
            "errors": s.errors,
            "inbox_items": store.items,
            "bytes_in": engine.stats_bytes_in,
            "bytes_out": engine.stats_bytes_out,
            "slow_consumers": engine.stats_slow_consumers,
            "commits": commit.batches,
            "link_packets_out": links.packets_out,
            "link_packets_in": links.packets_in,
            "rss_bytes": rss,
        }
        values.update({f"handshakes_{k}": v for k, v in engine.stats_handshakes.items()})
        values["group_skipped"] = hub.groups.skipped
        if hub.push is not None:
            values["push_sent"] = hub.push.sent
            values["push_failed"] = hub.push.failed
            values["push_dropped"] = hub.push.dropped
        stats.write(index, values)

    async def housekeeping() -> None:
        while True:
            publish()
            hub.resend_outbox(time.monotonic())
            await asyncio.sleep(PUBLISH_INTERVAL)

    hub.forward_outbox(store.outbox(), time.monotonic())
    chores = asyncio.create_task(housekeeping())

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides
    # Everything allocated so far lives as long as the worker: keep the
    # collector from scanning it again and again as connections come and go.
    gc.freeze()
    await stop.wait()

    engine.stop_accepting()
    await commit.drain()
    engine.close_all(CloseCode.GOING_AWAY, SHUTDOWN_REASON)
    await engine.wait_closed(settings.close_timeout)
    await commit.drain()
    chores.cancel()
    if hub.push is not None:
        await hub.push.close()
    publish()
    links.close()
    commit.close()
    engine.shutdown()


def run_worker(settings: Settings, place: Place) -> int:
    """The body of a forked worker process; returns its exit status."""
    logging.getLogger().handlers[0].setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s w{place.index} %(name)s: %(message)s")
    )
    uvloop.run(serve_worker(settings, place))
    return 0
