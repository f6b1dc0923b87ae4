"""Percentiles, the JSON record and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roost.bench import report


def test_percentiles_nearest_rank() -> None:
    assert report.percentiles([]) is None
    values = list(range(1, 1001))  # µs
    assert report.percentiles(values) == {"p50": 0.5, "p99": 0.99, "p999": 0.999, "max": 1.0}
    assert report.percentiles([7000]) == {"p50": 7.0, "p99": 7.0, "p999": 7.0, "max": 7.0}


def _result() -> dict[str, object]:
    return {
        "scenario": "relay",
        "target": "peer:picows",
        "connections": 10,
        "connected": 10,
        "failed": {},
        "latency_ms": {"p50": 1.0, "p99": 2.0, "p999": 3.0, "max": 4.0},
        "loss": 0,
        "duplicates": 0,
        "timeseries": [
            {
                "t": 0.0,
                "open": 0,
                "server_rss": 1 << 20,
                "kernel_growth": None,
                "p50_ms": None,
                "p99_ms": None,
            },
            {
                "t": 0.5,
                "open": 10,
                "server_rss": 2 << 20,
                "kernel_growth": 4096,
                "p50_ms": 1.0,
                "p99_ms": 2.0,
            },
        ],
    }


def test_summary_and_json(tmp_path: Path) -> None:
    result = _result()
    table = report.summary_table(result)
    assert table.row_count >= 5
    report.write_json(result, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == result


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report.plot(_result(), tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
