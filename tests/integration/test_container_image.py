"""The image itself, built with podman from the Dockerfile and run: scripts/container_image.py.

The recipe test (test_container_recipe.py) checks the Dockerfile's text and replays its install
steps in a venv; this one builds the image on a Debian Python 3.11 base made with debootstrap
and checks what only a running container can show: UID 65532, a read-only root with writes only
in the two volumes, the HEALTHCHECK answering SERVING, a Verify from the host through a
published loopback port, and a clean `podman stop`. It installs podman/buildah/runc/debootstrap
from Debian when missing (as root), so CI on a fresh machine runs it instead of skipping it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_CHECKS = (
    "HEALTHCHECK answers SERVING",
    "runs as UID 65532",
    "root filesystem is read-only",
    "a write outside the volumes is refused",
    "the sidecar wrote its socket and dev key into its two directories",
    "no writes outside its two directories",
    "Verify from the host through the published port",
    "a forged token is refused",
    "podman stop exits 0",
    "the sidecar exits 0 on SIGTERM",
)


# A first run on a new machine installs packages, debootstraps a base and downloads every wheel.
@pytest.mark.timeout(2400)
def test_container_image_builds_runs_read_only_as_non_root_and_verifies_from_the_host() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "container_image.py")],
        capture_output=True,
        text=True,
        timeout=2300,
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    passed = {line[6:] for line in done.stdout.splitlines() if line.startswith("ok    ")}
    for check in EXPECTED_CHECKS:
        assert any(line.startswith(check) for line in passed), f"{check!r} not run:\n{report}"
