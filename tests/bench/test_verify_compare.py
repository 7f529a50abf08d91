"""Issue 12's before/after Verify benchmark: one quick run against a tree exported with `git
archive` fills every cell for both trees (real sidecar processes from each tree, real load
processes) and writes the report. Nothing here asserts a speed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import verify_compare
from tests.support.bench_run import quick_section

ROOT = Path(__file__).resolve().parents[2]


def _has_history() -> bool:
    git = shutil.which("git")
    if git is None:
        return False
    done = subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not _has_history(), reason="needs git and this checkout's history")
@pytest.mark.timeout(600)
def test_quick_run_fills_before_and_after_for_every_cell(tmp_path: Path) -> None:
    document = quick_section("verify_compare", tmp_path, "--before-ref", "HEAD")
    assert document["inprocess_errors"] == {}
    cells = {(row["alg"], row["cell"]) for row in document["rows"]}
    assert cells == {(a, c) for a in verify_compare.ALGS for c in verify_compare.CELLS}
    for row in document["rows"]:
        for side in ("before", "after"):
            figure = row[side]
            assert figure["rounds"] == verify_compare.QUICK.rounds
            assert 0 < figure["min"] <= figure["calls_per_s"] <= figure["max"], row
            assert figure["errors"] == 0, row
            if row["cell"].startswith("gRPC"):
                assert 0 < figure["p50_ms"] <= figure["p99_ms"], row
        assert row["ratio"] > 0
        assert row["verdict"] == "one round: no noise estimate"  # --quick runs one round
    markdown = (tmp_path / "verify_compare.md").read_text()
    assert markdown.count("| gRPC cold |") == markdown.count("| in-process warm |") == 3


def _side(rate: float, low: float, high: float, rounds: int = 3) -> dict[str, Any]:
    return {"calls_per_s": rate, "min": low, "max": high, "rounds": rounds}


def test_verdict_is_noise_only_when_the_rounds_ranges_overlap() -> None:
    verdict = verify_compare._verdict
    assert verdict(_side(100, 90, 110), _side(105, 108, 120)) == "within noise"
    assert verdict(_side(100, 90, 110), _side(130, 120, 140)) == "faster"
    assert verdict(_side(100, 90, 110), _side(70, 60, 80)) == "slower"
    one = _side(100, 100, 100, rounds=1)
    assert verdict(one, _side(200, 200, 200, rounds=1)) == "one round: no noise estimate"
