"""The ``roost`` command line: version, tokens, the secret, settings."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from roost import __version__
from roost.auth import load_secret, verify_token
from roost.config import Settings, load_settings
from roost.errors import ConfigError


def roost(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "ROOST_SECRET"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "roost", *args], capture_output=True, text=True, env=full_env
    )


def test_version() -> None:
    result = roost("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"roost {__version__}"


def test_token_is_signed_with_the_generated_secret(tmp_path: Path) -> None:
    result = roost("token", "alice", "--data-dir", str(tmp_path))
    assert result.returncode == 0
    secret_path = tmp_path / "secret"
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert verify_token(load_secret(tmp_path), result.stdout.strip()) == "alice"
    # The secret is reused, not regenerated.
    before = secret_path.read_bytes()
    assert roost("token", "bob", "--data-dir", str(tmp_path)).returncode == 0
    assert secret_path.read_bytes() == before


def test_token_with_ttl_expires(tmp_path: Path) -> None:
    import jwt

    token = roost("token", "alice", "--ttl", "60", "--data-dir", str(tmp_path)).stdout.strip()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] in (59, 60, 61)


def test_secret_from_file_and_environment(tmp_path: Path) -> None:
    secret_file = tmp_path / "key"
    secret_file.write_text("from-a-file-secret-of-enough-length-32b\n")
    token = roost("token", "a", "--secret-file", str(secret_file), "--data-dir", str(tmp_path))
    assert verify_token(b"from-a-file-secret-of-enough-length-32b", token.stdout.strip()) == "a"
    env = {"ROOST_SECRET": "from-the-environment-secret-32-bytes!"}
    token = roost("token", "b", "--data-dir", str(tmp_path), env=env)
    assert verify_token(b"from-the-environment-secret-32-bytes!", token.stdout.strip()) == "b"
    assert not (tmp_path / "secret").exists()


def test_bad_user_id_is_refused(tmp_path: Path) -> None:
    result = roost("token", "not a user", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "invalid user id 'not a user'" in result.stderr


def test_missing_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    result = roost("token", "a", "--secret-file", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "cannot read secret file" in result.stderr


def test_toml_settings_and_flag_overrides(tmp_path: Path) -> None:
    config = tmp_path / "roost.toml"
    config.write_text('port = 9100\nmax-body = 1000\ninbox_cap = 5\nfsync = "normal"\n')
    settings = load_settings(config, {"port": "9200", "demo": None})
    assert settings.port == 9200  # the flag wins
    assert settings.max_body == 1000
    assert settings.inbox_cap == 5
    assert settings.fsync == "normal"
    assert settings.handshake_timeout == Settings().handshake_timeout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nonsense = 1\n", "unknown setting 'nonsense'"),
        ('port = "abc"\n', "port must be a int"),
        ("max_body = 0\n", "max_body must be positive"),
        ("max_body = 2000000\n", "max_body cannot exceed max_frame"),
        ('fsync = "sometimes"\n', "fsync must be 'full' or 'normal'"),
        ("demo = 1\n", "demo must be true or false"),
        ("port = \n", "Invalid value"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "roost.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config, {})
    assert message in str(info.value)


def test_serve_refuses_bad_settings_with_exit_2(tmp_path: Path) -> None:
    result = roost("serve", "--data-dir", str(tmp_path), "--max-frame", "-5")
    assert result.returncode == 2
    assert result.stderr.strip() == "roost: max_frame must be positive, got -5"


def test_serve_prints_effective_settings(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server("--inbox-cap", "77")
    text = server.log.read_text()
    assert f"listening on ws://127.0.0.1:{server.port}/ws" in text
    assert "inbox_cap = 77" in text
    assert "fsync = full" in text
