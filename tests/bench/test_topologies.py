"""Issue 16's topology benchmark: the quick run measures Refresh, Revoke and propagation on
every topology (real redis-server processes, real sidecars, real load processes) and writes
a well-formed report. Nothing here asserts a speed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import topologies
from tests.support.bench_run import quick_section

pytestmark = pytest.mark.redis
if shutil.which("redis-server") is None and os.environ.get("AUTHSIDECAR_REQUIRE_REDIS") != "1":
    # As tests/conftest.py does for every Redis test: skip locally, fail in CI.
    pytest.skip("redis-server is not on PATH", allow_module_level=True)


@pytest.mark.timeout(600)
def test_quick_run_reports_every_topology_with_cpu_per_process(tmp_path: Path) -> None:
    document = quick_section("topologies", tmp_path, "--label", "quick")
    run = document["runs"]["quick"]
    assert [t["topology"] for t in run["topologies"]] == list(topologies.TOPOLOGIES)
    for topo in run["topologies"]:
        _check_topology(topo)
    markdown = (tmp_path / "topologies.md").read_text()
    for name in topologies.TOPOLOGIES:
        assert f"| {name} | Refresh |" in markdown
        assert f"| {name} | Revoke |" in markdown
    # A second label is compared with the first, row by row.
    document["runs"]["after"] = {**run, "label": "after"}
    compared = topologies.markdown(document)
    _, _, comparison = compared.partition("## after against quick (calls/s)")
    assert comparison.count(" | 1.00 |") == 2 * len(topologies.TOPOLOGIES)


def _check_topology(topo: dict[str, Any]) -> None:
    name = topo["topology"]
    propagation = topo["propagation"]
    assert propagation["revocations"] == topologies.QUICK.propagation
    assert propagation["sidecars"] == 3
    assert 0 < propagation["p50_ms"] <= propagation["p99_ms"] <= propagation["max_ms"]
    assert {row["op"] for row in topo["throughput"]} == {"Refresh", "Revoke"}
    for row in topo["throughput"]:
        assert row["calls"] > 0 and row["calls_per_s"] > 0, row
        assert row["errors"] == {}, row
        assert isinstance(row["cycled"], bool) if row["op"] == "Revoke" else "cycled" not in row
        cpu = row["cpu_s"]
        assert {"sidecar 1", "sidecar 2", "sidecar 3", "load generators"} <= set(cpu)
        assert set(topo["redis_processes"]) <= set(cpu)
        assert all(value >= 0 for value in cpu.values()), cpu
        assert sum(v for k, v in cpu.items() if k.startswith("sidecar")) > 0, cpu
        assert row["machine_busy_cores"] > 0
        assert row["sidecar_cpu_ms_per_call"] > 0
        assert row["bound"]
    redis = topo["redis_processes"]
    if name == "sentinel":
        assert sum(label.startswith("sentinel") for label in redis) == 3
        assert sum(label.startswith("redis") for label in redis) == 2
    if name.startswith("cluster"):
        assert len(redis) == len(topo["keys"]) == int(name.removeprefix("cluster"))
    # The fleet wrote to the store: its keys are somewhere.
    assert sum(topo["keys"].values()) > 0


def test_bound_names_the_saturated_redis_before_the_machine() -> None:
    cores = {"sidecar 1": 0.5, "sidecar 2": 0.5, "primary :1": 0.95, "load generators": 0.1}
    assert topologies._bound(cores, 2.0, 2, 24).startswith("Redis: primary :1")


def test_bound_says_when_the_figure_is_this_machines_cores() -> None:
    cores = {"sidecar 1": 0.6, "sidecar 2": 0.6, "redis :1": 0.1, "load generators": 0.5}
    text = topologies._bound(cores, 1.95, 2, 24)
    assert text.startswith("this machine's 2 cores")
    assert "sidecars 1.20" in text and "Redis 0.10" in text


def test_bound_without_saturation_is_latency() -> None:
    cores = {"sidecar 1": 0.2, "redis :1": 0.05, "load generators": 0.1}
    assert topologies._bound(cores, 0.4, 2, 8).startswith("no CPU limit reached")
