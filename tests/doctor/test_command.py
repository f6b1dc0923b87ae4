"""The `roost doctor` command: exit codes, JSON shape, --write-sysctl, --systemd."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from roost.doctor import command
from roost.doctor.limits import need_fds_per_worker

from .support import FIXTURE_PROC, RLIMIT_HERE, write

SRC = Path(__file__).resolve().parents[2] / "src"
LIMIT_KEYS = {"name", "current", "needed", "verdict", "symptom", "fix", "raisable"}
MEMORY_KEYS = {
    "kernel_bytes_per_conn",
    "roost_bytes_per_conn",
    "needed_bytes",
    "available_bytes",
    "max_connections",
}


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "roost.doctor.command", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def here(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's RLIMIT_NOFILE, whatever the test runner's is."""
    monkeypatch.setattr(resource, "getrlimit", lambda _which: RLIMIT_HERE)


def main(*args: str) -> int:
    return command.main(list(args))


def test_json_shape_and_fail_exit() -> None:
    # 100M connections exceed the fixture's fs.file-max whatever RLIMIT_NOFILE the runner has.
    out = doctor("--proc-root", str(FIXTURE_PROC), "--connections", "100_000_000", "--json")
    assert out.returncode == 2, out.stderr
    data = json.loads(out.stdout)
    assert {"connections", "workers", "verdict", "limits", "memory"} <= set(data)
    assert data["connections"] == 100_000_000
    assert data["workers"] == os.cpu_count()
    assert data["verdict"] == "fail"
    for limit in data["limits"]:
        assert set(limit) >= LIMIT_KEYS
    assert set(data["memory"]) >= MEMORY_KEYS
    names = [limit["name"] for limit in data["limits"]]
    assert "fs.file-max" in names and "net.ipv4.tcp_mem" in names
    # --proc-root is not /proc: the measurement is skipped and says why.
    assert data["memory"]["measurement"] is None
    assert "--proc-root" in data["memory"]["source"]


def test_ok_exit_for_a_small_count() -> None:
    out = doctor("--proc-root", str(FIXTURE_PROC), "--connections", "500", "--workers", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "verdict: OK" in out.stdout
    assert "memory budget" in out.stdout


def test_warn_exit(here: None, capsys: pytest.CaptureFixture[str]) -> None:
    # 60 workers fit RLIMIT_NOFILE here; tcp_mem, orphans etc. only warn.
    code = main("--proc-root", str(FIXTURE_PROC), "--workers", "60", "--json")
    data = json.loads(capsys.readouterr().out)
    assert (code, data["verdict"]) == (1, "warn")


def test_unknown_counts_as_warn(
    here: None, proc_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (proc_root / "sys/net/core/somaxconn").unlink()
    code = main("--proc-root", str(proc_root), "--connections", "500", "--workers", "1", "--json")
    data = json.loads(capsys.readouterr().out)
    assert (code, data["verdict"]) == (1, "warn")


def test_roost_bytes_override(here: None, capsys: pytest.CaptureFixture[str]) -> None:
    main("--proc-root", str(FIXTURE_PROC), "--roost-bytes", "2048", "--json", "--workers", "60")
    memory = json.loads(capsys.readouterr().out)["memory"]
    assert memory["roost_bytes_per_conn"] == 2048
    assert memory["kernel_bytes_per_conn"] == 5000  # default: --proc-root skips measuring


def test_measures_for_real_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    main("--connections", "1000", "--workers", "1", "--pairs", "200", "--json")
    memory = json.loads(capsys.readouterr().out)["memory"]
    assert memory["measurement"]["pairs"] == 200
    assert memory["kernel_bytes_per_conn"] > 0
    assert memory["kernel_bytes_per_pair"] == 2 * memory["kernel_bytes_per_conn"]
    assert memory["max_connections"] > 0


def test_write_sysctl_round_trip(
    here: None, proc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "90-roost.conf"
    code = main("--proc-root", str(proc_root), "--workers", "60", "--write-sysctl", str(path))
    assert code == 1
    assert f"wrote {path}" in capsys.readouterr().out
    text = path.read_text()
    settings = dict(
        line.split(" = ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert settings == {
        "net.core.netdev_max_backlog": "1500",
        "net.ipv4.tcp_mem": "500000 666667 1000000",
        "net.ipv4.tcp_max_orphans": "1000000",
        "net.ipv4.tcp_max_tw_buckets": "1000000",
        "net.netfilter.nf_conntrack_max": "1000000",
    }
    assert "# fs.file-max = 2466177" in text  # sufficient values stay as comments
    assert f"LimitNOFILE={need_fds_per_worker(1_000_000, 60)}" in text
    # Apply the file to the /proc copy: the doctor is then satisfied.
    for key, value in settings.items():
        write(proc_root, "sys/" + key.replace(".", "/"), value.replace(" ", "\t") + "\n")
    assert main("--proc-root", str(proc_root), "--workers", "60") == 0


def test_write_sysctl_unwritable(here: None, tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "x.conf"
    code = main("--proc-root", str(FIXTURE_PROC), "--no-measure", "--write-sysctl", str(target))
    assert code == 2


def test_systemd_unit() -> None:
    out = doctor("--proc-root", str(FIXTURE_PROC), "--workers", "60", "--systemd")
    assert out.returncode == 0, out.stderr
    unit = out.stdout
    assert "[Service]" in unit and "[Install]" in unit
    assert f"LimitNOFILE={need_fds_per_worker(1_000_000, 60)}\n" in unit
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "serve" in exec_line
    assert "--workers 60" in exec_line
    assert "--max-connections 1000000" in exec_line


def test_systemd_unit_warns_about_nr_open(proc_root: Path) -> None:
    write(proc_root, "sys/fs/nr_open", "1024\n")
    out = doctor("--proc-root", str(proc_root), "--systemd")
    assert "above fs.nr_open" in out.stdout


def test_add_parser_hooks_into_a_cli(here: None, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="roost")
    sub = parser.add_subparsers(dest="command")
    command.add_parser(sub)
    args = parser.parse_args(
        ["doctor", "--connections", "1,000,000", "--workers", "60", "--no-measure", "--json"]
    )
    assert args.func is command.run
    assert args.connections == 1_000_000
    assert args.func(args) == 1
    assert json.loads(capsys.readouterr().out)["workers"] == 60


@pytest.mark.parametrize("bad", ["0", "-5", "many"])
def test_rejects_bad_counts(bad: str) -> None:
    with pytest.raises(SystemExit):
        main("--connections", bad)
