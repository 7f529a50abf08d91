"""The benchmark suite runs end to end and writes well-formed results (not a timed test).

Every cell measures until each load process has completed `MIN_CALLS` calls (bench/load.py),
however short `--duration` and however loaded the machine, so "each cell measured something"
is a progress check, never a speed check. The window here is shorter than one call, so the
test also pins that mechanism (without it every cell would count nothing).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.load import MIN_CALLS
from sidecar.jwa import DISTINCT_NAMES as DISTINCT_ALGS  # every computation; Ed25519 is EdDSA

ROOT = Path(__file__).resolve().parents[2]
_SIDECAR_ROWS = (
    "sidecar verify (cache off)",
    "sidecar verify (cache miss)",
    "sidecar sign (encode_jws)",
)
_REFERENCES = ("python-jose decode", "PyJWT decode")
_CACHE_PATHS = ("off", "miss", "insert", "hit")


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
            "0.001",  # shorter than one call: every cell's count comes from MIN_CALLS
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
        assert row["calls"] >= MIN_CALLS, row
        assert row["errors"] == {}, row
        assert row["server_cpu_s_per_1k"] is None or row["server_cpu_s_per_1k"] >= 0
    names = {row["name"] for row in document["inprocess"]}
    assert {"python-jose decode", "PyJWT decode", "sidecar verify (cache hit)"} <= names
    assert all(entry["measured_bytes_per_entry"] > 0 for entry in document["cache_cost"])
    assert {t["target"] for t in document["targets"]} >= {"Issue ES256 /s"}
    markdown = (tmp_path / "latest.md").read_text()
    assert "| target | value | goal | met |" in markdown
    _check_every_algorithm(document, markdown)
    _check_verify_cache_cell(document, markdown)


def _check_verify_cache_cell(document: dict[str, Any], markdown: str) -> None:
    """Issue 15's verify-cache cell: every path of every core algorithm, measured, and the
    shared-token cell with the sidecar's cache on and off."""
    cell = document["verify_cache"]
    paths = {(row["alg"], row["path"]) for row in cell["rows"] if row["cpu_us_median"] > 0}
    assert paths == {(alg, path) for alg in ("HS256", "RS256", "ES256") for path in _CACHE_PATHS}
    modes = {(row["interceptors"], row["sidecar_cache"]) for row in cell["shared"]}
    assert {mode for _, mode in modes} == {"on", "off"}
    assert all(row["asked"] >= row["tokens"] for row in cell["shared"])
    assert "## Sidecar verify cache: CPU per Verify on each path" in markdown


def _check_every_algorithm(document: dict[str, Any], markdown: str) -> None:
    """Every supported algorithm has its sidecar rows and its raw primitive in-process (the
    test fails if one is dropped), and each reference library is either measured for it or
    said, in a note, to lack it."""
    kinds: dict[str, dict[str, str]] = {}
    for row in document["inprocess"]:
        kinds.setdefault(row["alg"], {})[row["name"]] = row["kind"]
    assert set(kinds) == DISTINCT_ALGS
    for alg, by_name in kinds.items():
        assert set(_SIDECAR_ROWS) <= set(by_name), alg
        assert "primitive verify" in by_name.values(), alg
        for reference in _REFERENCES:
            gaps = [n for n in document["notes"] if n.startswith(f"in-process {reference}:")]
            said = any(re.search(rf"\b{alg}\b", note) for note in gaps)
            assert (reference in by_name) != said, (alg, reference)
    summary = {entry["alg"]: entry for entry in document["algorithms"]}
    assert set(summary) == DISTINCT_ALGS
    assert all(entry["raw_verify_us"] > 0 for entry in summary.values())
    assert "## Every supported algorithm" in markdown
