"""The client is its own distribution: `authsidecar-client` builds, installs alone, and works.

Issue 14's "done when": `pip install <built client wheel>` in a fresh venv installs the client,
grpcio, protobuf and googleapis-common-protos and nothing that those three do not bring
themselves; the two-service example then runs from that venv against a live sidecar.

The allowed set is computed from the installed distributions' own metadata (the dependency
closure of the three), never written down here, so a new dependency of the client, or one
the server leaks into it, fails the test. Installing resolves against the configured indexes
with requirements.lock as constraints, so pip's cache (filled by `./dev`) serves it offline.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.client.test_examples import EXPECTED_OUTPUT, run_example
from tests.support.sidecar import running_sidecar

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python"
CLIENT_DIST = "authsidecar-client"
DIRECT = {"grpcio", "protobuf", "googleapis-common-protos"}

pytestmark = pytest.mark.timeout(600)


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, sdist), built from a copy of clients/python (the checkout stays clean).

    `python -m build` makes the sdist first and the wheel FROM the sdist, so a file missing
    from the sdist is missing from the wheel too. No isolation: the dev venv's setuptools is
    the backend, so the build needs no network.
    """
    work = tmp_path_factory.mktemp("client-src")
    source = work / "python"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    )
    out = work / "dist"
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source)
    (wheel,) = out.glob("authsidecar_client-*.whl")
    (sdist,) = out.glob("authsidecar_client-*.tar.gz")
    return wheel, sdist


@pytest.fixture(scope="module")
def client_venv(
    built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, set[str]]]:
    """A fresh venv outside the repository with only the wheel installed; also returns the
    distributions the venv had before the install (pip, and setuptools on 3.11)."""
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    assert not venv.is_relative_to(ROOT)
    _run(sys.executable, "-m", "venv", venv)
    before = _installed(venv)
    _run(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-c",
        ROOT / "requirements.lock",
        built[0],
    )
    yield venv, before


def _site_packages(venv: Path) -> list[str]:
    return sorted(str(p) for p in venv.glob("lib/python3*/site-packages"))


def _installed(venv: Path) -> set[str]:
    return {
        canonicalize_name(d.metadata["Name"])
        for d in metadata.distributions(path=_site_packages(venv))
    }


def _requires(venv: Path, name: str) -> set[str]:
    """Names `name` requires in that venv, markers evaluated for this interpreter (the venv's
    base), no extras."""
    dist: metadata.Distribution | None = None
    for candidate in metadata.distributions(path=_site_packages(venv)):
        if canonicalize_name(candidate.metadata["Name"]) == canonicalize_name(name):
            dist = candidate
            break
    assert dist is not None, f"{name} is required but not installed"
    names: set[str] = set()
    for line in dist.requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.add(canonicalize_name(requirement.name))
    return names


def _closure(venv: Path, roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_requires(venv, name))
    return seen


def test_client_sdist_and_wheel_ship_the_typed_packages_and_nothing_of_the_server(
    built: tuple[Path, Path],
) -> None:
    wheel, sdist = built
    names = zipfile.ZipFile(wheel).namelist()
    assert "authsidecar/client/py.typed" in names
    assert "authsidecar/v1/auth_pb2.pyi" in names
    assert "authsidecar/envoy/service/auth/v3/external_auth_pb2.py" in names
    assert not [n for n in names if n.startswith("sidecar/")]
    with tarfile.open(sdist) as archive:
        members = {m.split("/", 1)[1] for m in archive.getnames() if "/" in m}
    assert {"README.md", "LICENSE", "pyproject.toml", "authsidecar/client/py.typed"} <= members
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    # The licence travels with the code a service vendors: the text, and its SPDX name.
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in text.splitlines()
    requires = [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    unconditional = {canonicalize_name(Requirement(r).name) for r in requires if ";" not in r}
    assert unconditional == DIRECT
    # Ranges, never pins: the client must fit next to a service's own grpcio.
    pinned = [
        r for r in requires if any(s.operator in ("==", "===") for s in Requirement(r).specifier)
    ]
    assert not pinned


def test_client_wheel_installs_only_grpcio_protobuf_googleapis_and_their_own_dependencies(
    client_venv: tuple[Path, set[str]],
) -> None:
    venv, before = client_venv
    assert _requires(venv, CLIENT_DIST) == DIRECT
    allowed = {canonicalize_name(CLIENT_DIST)} | _closure(venv, DIRECT)
    added = _installed(venv) - before
    assert added == allowed - before
    probe = (
        "import importlib.util as u, authsidecar.client as c;"
        "print(c.__file__);"
        "print([m for m in ('sidecar', 'jose', 'cryptography', 'redis', 'pydantic')"
        " if u.find_spec(m)])"
    )
    where, server_modules = _run(venv / "bin" / "python", "-c", probe, cwd=venv).splitlines()
    assert Path(where).is_relative_to(venv)
    assert server_modules == "[]"


async def test_two_services_example_runs_from_the_installed_client_wheel(
    client_venv: tuple[Path, set[str]], data_dir: Path
) -> None:
    venv, _ = client_venv
    async with running_sidecar(data_dir) as sidecar:
        out, returncode = await run_example(
            sidecar.unix_target,
            sidecar.admin_target,
            python=str(venv / "bin" / "python"),
            cwd=venv,
        )
    assert returncode == 0
    assert out.splitlines() == EXPECTED_OUTPUT
