"""The ``roost`` command: parse flags, call into the package. Nothing else."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from roost import __version__
from roost.config import Settings, load_settings
from roost.errors import ConfigError

_SERVE_HELP = {
    "host": "address to listen on",
    "port": "port to listen on",
    "data_dir": "where inboxes and the generated secret live",
    "secret_file": (
        "file holding the token-signing secret (else $ROOST_SECRET, else <data-dir>/secret)"
    ),
    "demo": "serve the demo chat page at / and tokens at /demo/token",
    "api_key_file": (
        "file holding the backend API key (else $ROOST_API_KEY, else <data-dir>/api-key)"
    ),
    "push_webhook": "URL to POST push notifications to, for items stored for offline users",
    "push_secret_file": (
        "file holding the webhook signing key"
        " (else $ROOST_PUSH_SECRET, else <data-dir>/push-secret)"
    ),
}


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, named after it; unset flags stay None so that
    the TOML file and the defaults show through (config.load_settings)."""
    parser.add_argument("--config", type=Path, help="a TOML file of settings")
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(Settings(), f.name)
        help_text = _SERVE_HELP.get(f.name, f"default {default}")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(
                flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text
            )


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return load_settings(args.config, overrides)


def _serve(args: argparse.Namespace) -> int:
    from roost.workers.supervisor import run

    return run(_settings(args))


def _token(args: argparse.Namespace) -> int:
    from roost.auth import issue_token, load_secret

    settings = _settings(args)
    secret = load_secret(settings.data_dir, settings.secret_file)
    print(issue_token(secret, args.user, args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roost", description=__doc__)
    parser.add_argument("--version", action="version", version=f"roost {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    _add_settings_flags(serve)
    serve.set_defaults(func=_serve)

    token = sub.add_parser("token", help="print a token for a user")
    token.add_argument("user", help="the user id (the token's sub)")
    token.add_argument("--ttl", type=float, default=None, help="seconds until it expires")
    _add_settings_flags(token)
    token.set_defaults(func=_token)

    from roost.bench.command import add_parser as add_bench
    from roost.doctor.command import add_parser as add_doctor

    add_doctor(sub)
    add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"roost: {exc}", file=sys.stderr)
        return 2
