"""An example push gateway: roost's webhook in, FCM HTTP v1 requests out.

roost POSTs a signed notification when items are stored for a user who is
offline (docs/push.md). This gateway checks the signature, looks up the
user's device tokens, and builds one FCM HTTP v1 ``messages:send`` request
body per device. It prints them, one JSON object per line, instead of
sending them: sending needs your Firebase project id and an OAuth 2 access
token of a service account (see docs/push.md), and this example calls no
Google service.

    roost serve --push-webhook http://127.0.0.1:8099/push &
    python examples/fcm_gateway.py --secret-file roost-data/push-secret \\
        --tokens tokens.json --project my-project --port 8099

``tokens.json`` maps user ids to FCM registration tokens:
``{"bob": ["fcm-token-of-bobs-phone"]}``.

An FCM message also reaches iOS devices through APNs; the ``apns`` block
below sets what APNs needs (priority, collapse id, thread id). A gateway for
APNs alone would send the same ``aps`` payload to api.push.apple.com.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FCM_URL = "https://fcm.googleapis.com/v1/projects/{project}/messages:send"
MAX_BODY = 1_048_576  # bytes of a webhook request this gateway reads


def verify(secret: bytes, body: bytes, signature: str | None) -> bool:
    """Whether ``signature`` (the X-Roost-Signature header) signs ``body``.

    The HMAC is over the raw bytes as received: check it before parsing."""
    if not signature or not signature.startswith("sha256="):
        return False
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(signature[len("sha256=") :], expected)


def title_and_text(items: list[dict[str, Any]]) -> tuple[str, str]:
    """What the notification shows: who wrote (and where), and what."""
    last = items[-1]
    where = f" in {last['group']}" if last.get("group") else ""
    title = f"{last['from']}{where}"
    if len(items) > 1:
        return title, f"{len(items)} new messages"
    return title, last.get("preview") or "New message"


def to_fcm(notification: dict[str, Any], tokens: list[str]) -> list[dict[str, Any]]:
    """One FCM HTTP v1 request body per device token of the user.

    ``data`` carries the item ids so the app can fetch and confirm them when
    it wakes; FCM requires data values to be strings. A newer notification
    for the same user replaces the older one on the device (collapse keys).
    """
    user = notification["user"]
    items = notification["items"]
    if not items:
        return []
    title, text = title_and_text(items)
    last = items[-1]
    thread = last.get("group") or last["from"]
    data = {
        "user": user,
        "ids": ",".join(item["id"] for item in items),
        "from": last["from"],
        "group": last.get("group") or "",
        "ts": str(last["ts"]),
    }
    return [
        {
            "message": {
                "token": token,
                "notification": {"title": title, "body": text},
                "data": data,
                "android": {"priority": "HIGH", "collapse_key": f"roost-{user}"},
                "apns": {
                    "headers": {"apns-priority": "10", "apns-collapse-id": f"roost-{user}"},
                    "payload": {"aps": {"thread-id": thread, "sound": "default"}},
                },
            }
        }
        for token in tokens
    ]


def handle(
    secret: bytes,
    tokens_of: Callable[[str], list[str]],
    body: bytes,
    signature: str | None,
) -> tuple[int, list[dict[str, Any]]]:
    """One webhook request: (HTTP status to answer, FCM request bodies).

    401 for a bad signature (roost drops it: a 4xx is not retried), 400 for
    a body that is not a notification, else 200 with the FCM bodies. A real
    gateway would answer 503 when FCM fails, so that roost retries."""
    if not verify(secret, body, signature):
        return 401, []
    try:
        notification = json.loads(body)
        user = notification["user"]
        if not isinstance(notification["items"], list):
            raise TypeError("items")
    except (ValueError, KeyError, TypeError):
        return 400, []
    return 200, to_fcm(notification, tokens_of(user))


def serve(
    secret: bytes,
    tokens_of: Callable[[str], list[str]],
    project: str,
    host: str,
    port: int,
    out: Any = sys.stdout,
) -> ThreadingHTTPServer:
    url = FCM_URL.format(project=project)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._answer(413)
                return
            body = self.rfile.read(length)
            status, requests = handle(
                secret, tokens_of, body, self.headers.get("X-Roost-Signature")
            )
            for request in requests:
                # Here a real gateway POSTs `request` to `url` with
                # "Authorization: Bearer <OAuth 2 access token>".
                print(json.dumps({"url": url, "body": request}), file=out, flush=True)
            self._answer(status)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret-file", type=Path, required=True, help="roost's push secret")
    parser.add_argument("--tokens", type=Path, help="JSON file: user id -> [FCM tokens]")
    parser.add_argument("--project", default="my-project", help="the Firebase project id")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    secret = args.secret_file.read_bytes().strip()
    registry: dict[str, list[str]] = json.loads(args.tokens.read_text()) if args.tokens else {}
    server = serve(secret, lambda user: registry.get(user, []), args.project, args.host, args.port)
    print(f"fcm gateway on http://{args.host}:{server.server_address[1]}/", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
