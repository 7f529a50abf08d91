"""The Node.js package's own suite (clients/node, `node --test`) as part of pytest.

It starts the real Python sidecar, a Python service and a Node service, and proves that the
Node client calls Python through the sidecar and a Python client calls Node; it drives the
Node decision cache through test/fake_watch_sidecar.js (a fake of our own Watch protocol,
Verify answered by the real sidecar) and, in test/watch_e2e.test.js, against the real
sidecar's Watch stream; test/metrics.test.js scrapes its stats() from a real prom-client
registry. Without node and npm the test is skipped, unless
AUTHSIDECAR_REQUIRE_NODE=1 (CI), where it fails instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.node import node_tools as _tools

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"


@pytest.mark.timeout(600)
def test_node_client_and_interceptors_pass_against_the_real_sidecar() -> None:
    node, npm = _tools()
    # Installed when absent, or when the lockfile names a package node_modules lacks (a
    # checkout whose node_modules predates a new devDependency, such as prom-client).
    locked = json.loads((NODE_DIR / "package-lock.json").read_text())["packages"]
    if not all((NODE_DIR / name).is_dir() for name in locked if name):
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300
        )
    tests = sorted(str(p.relative_to(NODE_DIR)) for p in (NODE_DIR / "test").glob("*.test.js"))
    assert tests, "clients/node/test has no *.test.js"
    result = subprocess.run(
        [node, "--test", "--test-concurrency=1", *tests],
        cwd=NODE_DIR,
        env={**os.environ, "AUTHSIDECAR_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "# fail 0" in result.stdout
