"""Small bench runs end to end: the figures must agree with each other.

No timing thresholds: only counts and their relations are checked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from roost.bench.command import add_parser, main, run
from roost.bench.report import REQUIRED_KEYS
from roost.bench.spawn import Server

PEERS = ("peer:websockets", "peer:picows")
N = 240


def bench(tmp_path: Path, *args: str, code: int = 0) -> dict[str, Any]:
    out = tmp_path / "result.json"
    assert main([*args, "--json", str(out), "--quiet"]) == code
    result = json.loads(out.read_text())
    for key in REQUIRED_KEYS:
        assert key in result
    assert result["connected"] + sum(result["failed"].values()) == result["connections"]
    assert result["loadgen_cpu_s"] >= 0
    return result


def check_messaging(r: dict[str, Any]) -> None:
    assert r["delivered"] <= r["acked"] <= r["sent"]
    assert r["loss"] == r["acked"] - r["delivered"] if r["scenario"] == "relay" else True
    assert r["receipts"] <= r["delivered"]
    lat = r["latency_ms"]
    if r["scenario"] == "relay":
        assert lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"]
        assert r["acked_per_s"] > 0 and r["delivered_per_s"] > 0


def test_add_parser_hooks_into_a_cli() -> None:
    parser = argparse.ArgumentParser(prog="roost")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "relay", "--connections", "5", "--rate", "max"])
    assert args.func is run and args.scenario == "relay" and args.connections == 5


@pytest.mark.parametrize("target", PEERS)
def test_idle(tmp_path: Path, target: str) -> None:
    r = bench(tmp_path, "idle", "--spawn-server", "--target", target, "--connections", str(N),
              "--processes", "2", "--hold", "0.5")  # fmt: skip
    assert r["scenario"] == "idle" and r["target"] == target
    assert r["connected"] == N and r["failed"] == {} and r["open_at_measure"] == N
    for key in ("acked_per_s", "delivered_per_s", "latency_ms", "loss", "duplicates"):
        assert r[key] is None
    assert isinstance(r["server_bytes_per_conn"], int)
    assert isinstance(r["kernel_bytes_per_conn"], int)
    assert r["connect_rate_per_s"] > 0
    assert r["timeseries"] and r["timeseries"][-1]["server_rss"] > 0


@pytest.mark.parametrize("target", PEERS)
def test_relay_max(tmp_path: Path, target: str) -> None:
    r = bench(tmp_path, "relay", "--spawn-server", "--target", target, "--connections", str(N),
              "--processes", "2", "--duration", "1", "--drain", "20")  # fmt: skip
    check_messaging(r)
    assert r["loss"] == 0 and r["duplicates"] == 0 and r["unacked"] == 0
    assert r["receipts"] == r["delivered"] == r["acked"] > 0


def test_relay_at_a_rate_with_big_messages(tmp_path: Path) -> None:
    r = bench(tmp_path, "relay", "--spawn-server", "--target", "peer:picows", "--connections", "50",
              "--duration", "1", "--rate", "500", "--message-bytes", "20000")  # fmt: skip
    check_messaging(r)
    assert r["loss"] == 0 and r["duplicates"] == 0
    assert r["message_rate"] == 500.0 and r["message_bytes"] == 20000


@pytest.mark.parametrize("target", PEERS)
def test_storm(tmp_path: Path, target: str) -> None:
    r = bench(tmp_path, "storm", "--spawn-server", "--target", target, "--connections", str(N),
              "--processes", "2", "--inbox", "2", "--jitter", "0.5",
              "--duration", "20")  # fmt: skip
    check_messaging(r)
    assert r["storm_connections"] == r["storm_back"] == r["connected"] == N
    assert r["storm_pending_items"] == 2 * N
    assert r["loss"] == 0 and r["duplicates"] == 0
    assert r["redelivered"] == 2 * N
    assert r["storm_reconnect_s"] is not None and r["storm_redelivered_s"] is not None
    assert r["latency_ms"] is None and r["acked_per_s"] is None


def test_a_peer_that_drops_messages_shows_loss(tmp_path: Path) -> None:
    r = bench(tmp_path, "relay", "--spawn-server", "--target", "peer:websockets",
              "--server-arg=--fault=drop-every=25", "--connections", "100", "--duration", "0.5",
              "--drain", "1", code=1)  # fmt: skip
    check_messaging(r)
    assert r["loss"] > 0 and r["loss"] == r["acked"] - r["delivered"]
    assert r["duplicates"] == 0


def test_a_peer_that_repeats_messages_shows_duplicates(tmp_path: Path) -> None:
    r = bench(tmp_path, "relay", "--spawn-server", "--target", "peer:websockets",
              "--server-arg=--fault=dup-every=25", "--connections", "100", "--duration", "0.5",
              "--drain", "20", code=1)  # fmt: skip
    check_messaging(r)
    assert r["duplicates"] > 0 and r["loss"] == 0


def test_wrong_secret_fails_every_connection_with_its_reason(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not the server's secret, but long enough for HS256\n")
    with Server("peer:picows") as server:
        r = bench(tmp_path, "idle", "--url", server.url, "--secret-file", str(secret),
                  "--connections", "30", "--hold", "0", code=1)  # fmt: skip
    assert r["connected"] == 0 and r["failed"] == {"http 401": 30}
    assert r["connect_rate_per_s"] is None and r["server_bytes_per_conn"] is None


def test_url_mode_finds_the_local_server_by_its_port(tmp_path: Path) -> None:
    with Server("peer:websockets") as server:
        r = bench(tmp_path, "idle", "--url", server.url, "--data-dir", str(server.data_dir),
                  "--connections", "50", "--hold", "0",
                  "--source-ips", "127.4.0.1-127.4.0.3")  # fmt: skip
    assert r["connected"] == 50 and r["source_ips"] == 3
    assert r["server_rss_before"] is not None and r["server_bytes_per_conn"] is not None


def test_bad_options_exit_2(tmp_path: Path) -> None:
    assert main(["idle", "--data-dir", str(tmp_path), "--quiet"]) == 2  # no secret there
    assert main(["relay", "--spawn-server", "--target", "peer:picows", "--rate", "x"]) == 2
    assert main(["idle", "--workers", "2"]) == 2


@pytest.mark.parametrize("scenario", ["idle", "relay", "storm"])
def test_against_roost(tmp_path: Path, scenario: str, roost_serves: bool) -> None:
    if not roost_serves:
        pytest.skip("`python -m roost serve` is not there yet")
    extra = {"idle": ["--hold", "0.5"], "relay": ["--duration", "1", "--drain", "20"],
             "storm": ["--jitter", "0.5", "--duration", "20"]}[scenario]  # fmt: skip
    r = bench(tmp_path, scenario, "--spawn-server", "--target", "roost", "--connections", str(N),
              "--processes", "2", *extra)  # fmt: skip
    assert r["connected"] == N
    if scenario != "idle":
        check_messaging(r)
        assert r["loss"] == 0 and r["duplicates"] == 0
