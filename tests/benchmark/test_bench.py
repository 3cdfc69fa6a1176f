"""The benchmark script still runs and writes the JSON docs/benchmarks.md describes (no timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stack import REPO

# The scale-out section runs stand-in daemons: the broker is real, the model is not.
pytestmark = [pytest.mark.integration, pytest.mark.standin]


def test_quick_scaleout_writes_the_expected_json(tmp_path: Path, amqp_url: str) -> None:
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            "tests/benchmark/run.py",
            "--quick",
            "--only",
            "scaleout",
            "--out",
            str(out),
        ],
        cwd=REPO,
        check=True,
        timeout=300,
        env={**os.environ, "STT_BENCH_AMQP_URL": amqp_url},
    )
    report = json.loads(out.read_text())
    assert report["sections"] == ["scaleout"]
    assert {"cpu", "cores", "ram_gb", "python", "packages"} <= set(report["machine"])
    rows = report["rows"]
    assert [r["metric"] for r in rows] == [f"{n} stand-in daemon(s)" for n in (1, 2, 4, 8)]
    assert all(r["value"] > 0 and r["unit"] == "jobs/s" for r in rows)
    assert rows[0]["ratio"] == pytest.approx(1.0)
    assert isinstance(rows[-1]["met"], bool) and rows[-1]["target"] == ">= 7x"
