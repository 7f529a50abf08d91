"""The benchmark suite runs end to end and writes well-formed results (not a timed test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_bench_quick_writes_json_and_markdown(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--no-h2load",
            "--duration",
            "0.2",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads((tmp_path / "latest.json").read_text())
    groups = {row["group"] for row in document["rows"]}
    assert {"floor", "verify", "batch", "issue", "introspect", "refresh"} <= groups
    for row in document["rows"]:
        assert row["calls"] > 0, row
        assert row["errors"] == {}, row
        assert row["server_cpu_s_per_1k"] is None or row["server_cpu_s_per_1k"] >= 0
    names = {row["name"] for row in document["inprocess"]}
    assert {"python-jose decode", "PyJWT decode", "sidecar verify (cache hit)"} <= names
    assert all(entry["measured_bytes_per_entry"] > 0 for entry in document["cache_cost"])
    assert {t["target"] for t in document["targets"]} >= {"Issue ES256 /s"}
    assert "| target | value | goal | met |" in (tmp_path / "latest.md").read_text()
