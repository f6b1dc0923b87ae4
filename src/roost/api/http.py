"""Plain HTTP endpoints on the WebSocket port: health, metrics, stats, demo,
and the backend API (api.backend) under /api/.

Every answer is a complete response that closes the connection
(proto.handshake). Any worker answers for all of them: metrics come from the
shared stats rows (workers.stats), not from asking the other workers.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING

from roost import __version__
from roost.auth import is_user_id, issue_token
from roost.config import Settings
from roost.engine.loop import HANDSHAKE_OUTCOMES
from roost.engine.table import Conn
from roost.proto.handshake import Request, http_response, json_error
from roost.proto.messages import encode
from roost.workers.stats import SharedStats

if TYPE_CHECKING:
    from roost.api.backend import BackendApi

DEMO_TOKEN_TTL = 24 * 3600  # seconds a demo-page token lives

Route = Callable[[Request], bytes]

# (metric name, stats field, type, help); the counters are summed over workers.
_METRICS = (
    ("roost_connections", "connections", "gauge", "Open WebSocket connections."),
    ("roost_messages_in_total", "messages_in", "counter", "send ops accepted from clients."),
    ("roost_messages_out_total", "messages_out", "counter", "Inbox items written to clients."),
    ("roost_acks_total", "acks", "counter", "Acks sent (messages committed)."),
    ("roost_receipts_total", "receipts", "counter", "Delivery receipts stored."),
    ("roost_errors_total", "errors", "counter", "Error frames sent."),
    ("roost_inbox_items", "inbox_items", "gauge", "Unconfirmed items held in inboxes."),
    ("roost_bytes_in_total", "bytes_in", "counter", "Bytes read from client sockets."),
    ("roost_bytes_out_total", "bytes_out", "counter", "Bytes written to client sockets."),
    ("roost_slow_consumer_closes_total", "slow_consumers", "counter", "Closes with 4008."),
    ("roost_commits_total", "commits", "counter", "Group-commit transactions."),
    ("roost_push_sent_total", "push_sent", "counter", "Push notifications the gateway accepted."),
    ("roost_push_failed_total", "push_failed", "counter", "Push webhook attempts that failed."),
    ("roost_push_dropped_total", "push_dropped", "counter", "Push notifications given up."),
    (
        "roost_group_skipped_total",
        "group_skipped",
        "counter",
        "Group members skipped: their inbox was full.",
    ),
)


class HttpApi:
    def __init__(
        self,
        settings: Settings,
        secret: bytes,
        stats: SharedStats,
        backend: BackendApi | None = None,
    ) -> None:
        self.settings = settings
        self.secret = secret
        self.stats = stats
        self.backend = backend
        self.routes: dict[str, Route] = {
            "/healthz": self._healthz,
            "/metrics": self._metrics,
            "/api/stats": self._stats,
        }
        self._demo_page = b""
        if settings.demo:
            self._demo_page = resources.files("roost.demo").joinpath("index.html").read_bytes()
            self.routes["/"] = self._demo
            self.routes["/demo/token"] = self._demo_token

    def __call__(self, conn: Conn, request: Request) -> bytes | None:
        route = self.routes.get(request.path)
        if route is None:
            if self.backend is not None and request.path.startswith("/api/"):
                return self.backend(conn, request)
            return json_error(404, "not found")
        if request.method != "GET":
            return json_error(405, "method not allowed", (("Allow", "GET"),))
        return route(request)

    def _healthz(self, request: Request) -> bytes:
        rows = self.stats.rows()
        body = {
            "status": "ok",
            "version": __version__,
            "workers": len(rows),
            "connections": sum(row["connections"] for row in rows),
        }
        return http_response(200, encode(body))

    def _metrics(self, request: Request) -> bytes:
        rows = self.stats.rows()
        lines = []
        for name, field, kind, help_text in _METRICS:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.append(f"{name} {sum(row[field] for row in rows)}")
        lines.append("# HELP roost_handshakes_total Opening handshakes by outcome.")
        lines.append("# TYPE roost_handshakes_total counter")
        for outcome in HANDSHAKE_OUTCOMES:
            total = sum(row[f"handshakes_{outcome}"] for row in rows)
            lines.append(f'roost_handshakes_total{{outcome="{outcome}"}} {total}')
        lines.append("# HELP roost_worker_rss_bytes Resident memory of each worker process.")
        lines.append("# TYPE roost_worker_rss_bytes gauge")
        for index, row in enumerate(rows):
            lines.append(f'roost_worker_rss_bytes{{worker="{index}"}} {row["rss_bytes"]}')
        lines.append("# HELP roost_worker_connections Open connections of each worker.")
        lines.append("# TYPE roost_worker_connections gauge")
        for index, row in enumerate(rows):
            lines.append(f'roost_worker_connections{{worker="{index}"}} {row["connections"]}')
        body = ("\n".join(lines) + "\n").encode()
        return http_response(200, body, "text/plain; version=0.0.4; charset=utf-8")

    def _stats(self, request: Request) -> bytes:
        rows = self.stats.rows()
        totals = {field: sum(row[field] for row in rows) for field in rows[0] if field != "pid"}
        del totals["started_unix"]
        workers = [{"worker": index, **row} for index, row in enumerate(rows)]
        return http_response(200, encode({"totals": totals, "workers": workers}))

    def _demo(self, request: Request) -> bytes:
        return http_response(200, self._demo_page, "text/html; charset=utf-8")

    def _demo_token(self, request: Request) -> bytes:
        user = request.query.get("user", "")
        if not is_user_id(user):
            return json_error(400, "user must be 1-64 characters from [A-Za-z0-9._@-]")
        token = issue_token(self.secret, user, DEMO_TOKEN_TTL)
        return http_response(200, encode({"token": token, "user": user}))
