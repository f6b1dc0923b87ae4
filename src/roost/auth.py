"""Tokens: HS256 JWTs whose ``sub`` is the user id, and the secret that signs them.

PyJWT does the cryptography; this module only decides roost's rules: which
algorithm is accepted (HS256 alone, so a token cannot pick ``none``), what a
valid user id is, and where the secret comes from.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

import jwt

from roost.errors import AuthError, ConfigError

USER_ID = re.compile(r"[A-Za-z0-9._@-]{1,64}")
"""A user id: 1-64 characters from [A-Za-z0-9._@-] (docs/protocol.md)."""

_ALGORITHMS = ["HS256"]


def is_user_id(value: object) -> bool:
    return isinstance(value, str) and USER_ID.fullmatch(value) is not None


def issue_token(secret: bytes, user: str, ttl: float | None = None) -> str:
    """Sign a token for ``user``; with ``ttl`` seconds it expires, else never."""
    if not is_user_id(user):
        raise ConfigError(f"invalid user id {user!r}: 1-64 characters from [A-Za-z0-9._@-]")
    claims: dict[str, object] = {"sub": user, "iat": int(time.time())}
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_token(secret: bytes, token: str | None) -> str:
    """Return the user id of a valid token.

    Raises ``AuthError`` with the reason docs/protocol.md promises; the caller
    answers 401 with it and does not upgrade.
    """
    if not token:
        raise AuthError("missing token")
    try:
        claims = jwt.decode(
            token, secret, algorithms=_ALGORITHMS, options={"require": ["sub"], "verify_sub": False}
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.MissingRequiredClaimError:
        raise AuthError("invalid token: bad sub") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    sub = claims.get("sub")
    if not is_user_id(sub):
        raise AuthError("invalid token: bad sub")
    return str(sub)


def load_secret(
    data_dir: Path,
    secret_file: Path | None = None,
    *,
    env: str = "ROOST_SECRET",
    name: str = "secret",
) -> bytes:
    """The HMAC secret: ``secret_file``, else $ROOST_SECRET, else ``<data_dir>/secret``.

    The last is generated on first use with mode 0600 and reused afterwards, so
    tokens survive restarts. ``env`` and ``name`` give the other keys the same
    rule: the backend API key (ROOST_API_KEY, ``api-key``) and the push
    webhook's signing key (ROOST_PUSH_SECRET, ``push-secret``).
    """
    if secret_file is not None:
        try:
            value = secret_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {secret_file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"secret file {secret_file} is empty")
        return value
    from_env = os.environ.get(env)
    if from_env:
        return from_env.encode()
    path = data_dir / name
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value + b"\n")
    return value


def load_api_key(data_dir: Path, key_file: Path | None = None) -> bytes:
    """The backend API's bearer key: ``key_file``, else $ROOST_API_KEY, else
    ``<data_dir>/api-key`` (generated once, mode 0600)."""
    return load_secret(data_dir, key_file, env="ROOST_API_KEY", name="api-key")


def load_push_secret(data_dir: Path, secret_file: Path | None = None) -> bytes:
    """The push webhook's HMAC key: ``secret_file``, else $ROOST_PUSH_SECRET,
    else ``<data_dir>/push-secret`` (generated once, mode 0600)."""
    return load_secret(data_dir, secret_file, env="ROOST_PUSH_SECRET", name="push-secret")
