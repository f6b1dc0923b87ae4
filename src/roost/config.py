"""Settings: embedded defaults, then a TOML file, then command-line flags.

Every setting has one name, used alike as the TOML key and (with dashes) as
the flag, so docs/configuration.md can list each once.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from roost.errors import ConfigError


@dataclass(slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("roost-data")
    secret_file: Path | None = None
    demo: bool = False
    workers: int = 0  # worker processes; 0 = one per CPU
    max_connections: int = 1_000_000  # what the start-up preflight checks the limits against
    accept_rate: int = 20_000  # connections accepted per second per worker
    max_body: int = 65_536  # bytes of a message body -> error too_large
    max_frame: int = 1_048_576  # bytes of a frame or reassembled message -> close 1009
    inbox_cap: int = 10_000  # unconfirmed items per user -> error inbox_full
    max_outbuf: int = 4_194_304  # bytes queued for one slow reader -> close 4008
    rate_limit: int = 2_000  # frames per second per connection -> error rate_limited; 0 = off
    max_header_bytes: int = 8_192  # bytes of an HTTP request head -> 431
    handshake_timeout: float = 10.0  # seconds to complete the HTTP request head -> 408
    max_pending_handshakes: int = 4_096  # handshakes in progress -> 503
    close_timeout: float = 5.0  # seconds to wait for the peer's close frame
    keepalive_idle: int = 120  # seconds of silence before the kernel probes a peer
    keepalive_interval: int = 30  # seconds between kernel keepalive probes
    keepalive_count: int = 4  # unanswered probes before the kernel drops the peer
    backlog: int = 4_096  # listen() backlog, capped by net.core.somaxconn
    fsync: str = "full"  # "full": acked = on disk; "normal": acked = survives kill -9
    api_key_file: Path | None = None  # else $ROOST_API_KEY, else <data_dir>/api-key
    group_max_members: int = 100_000  # members one group may hold -> 400
    push_webhook: str | None = None  # URL POSTed for items stored for offline users; None = off
    push_secret_file: Path | None = None  # else $ROOST_PUSH_SECRET, else <data_dir>/push-secret
    push_window: float = 0.2  # seconds a user's items are collected into one notification
    push_retries: int = 5  # retries of a notification after a 5xx, timeout or connection error
    push_backoff: float = 0.5  # seconds before the first retry; doubles with each retry
    push_timeout: float = 5.0  # seconds for one webhook request
    push_concurrency: int = 32  # webhook requests in flight per worker (the connection pool)

    def validate(self) -> Settings:
        positive = (
            "port max_body max_frame inbox_cap max_outbuf max_header_bytes handshake_timeout "
            "max_connections accept_rate "
            "max_pending_handshakes close_timeout keepalive_idle keepalive_interval "
            "keepalive_count backlog group_max_members push_timeout push_concurrency"
        )
        for name in positive.split():
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.workers < 0 or self.workers > 4095:
            raise ConfigError("workers must be 0 (one per CPU) to 4095")
        if self.rate_limit < 0:
            raise ConfigError("rate_limit must be 0 (off) or positive")
        if not self.port < 65536:
            raise ConfigError(f"port must be below 65536, got {self.port}")
        if self.max_body > self.max_frame:
            raise ConfigError("max_body cannot exceed max_frame")
        if self.fsync not in ("full", "normal"):
            raise ConfigError(f"fsync must be 'full' or 'normal', got {self.fsync!r}")
        for name in ("push_window", "push_retries", "push_backoff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or positive, got {getattr(self, name)}")
        if self.push_webhook is not None and not self.push_webhook.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(f"push_webhook must be an http(s) URL, got {self.push_webhook!r}")
        return self

    def describe(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the effective settings, for the start-up banner."""
        return [(f.name, str(getattr(self, f.name))) for f in fields(self)]


_FIELDS = {f.name: f for f in fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    default = getattr(Settings(), name)
    is_path = name.endswith("_file") or name.endswith("_dir")
    kind = type(default) if default is not None else (Path if is_path else str)
    if kind is Path or is_path:
        return None if value is None else Path(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {kind.__name__}, got {value!r}") from None


def load_settings(config_file: Path | None, overrides: dict[str, Any]) -> Settings:
    """Defaults, overlaid by ``config_file`` (TOML), overlaid by ``overrides``
    (the flags that were given; None means not given)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(config_file.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_file}: {exc}") from None
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in _FIELDS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[name] = _coerce(name, value)
    for name, value in overrides.items():
        if value is not None:
            values[name] = _coerce(name, value)
    return dataclasses.replace(Settings(), **values).validate()
