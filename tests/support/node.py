"""Node.js for the tests of the Node client: found, or the test skipped (failed in CI)."""

from __future__ import annotations

import os
import shutil

import pytest


def node_tools() -> tuple[str, str]:
    """The paths of `node` and `npm`. Without them the test skips locally and fails where
    `AUTHSIDECAR_REQUIRE_NODE=1` (CI), so a missing Node can never turn the interop proofs
    into silent skips there."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        if os.environ.get("AUTHSIDECAR_REQUIRE_NODE") == "1":
            pytest.fail("node and npm are required here (AUTHSIDECAR_REQUIRE_NODE=1)")
        pytest.skip("node/npm not installed (set AUTHSIDECAR_REQUIRE_NODE=1 to fail instead)")
    return node, npm
