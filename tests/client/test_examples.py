"""examples/two_services runs as its README says, against a real sidecar."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.support.sidecar import running_sidecar

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two_services"


async def test_two_services_example_runs_against_the_sidecar(data_dir: Path) -> None:
    async with running_sidecar(data_dir) as sidecar:  # no audience restriction, as `./dev up`
        out, returncode = await run_example(sidecar.unix_target, sidecar.admin_target)
    assert returncode == 0
    assert out.splitlines() == EXPECTED_OUTPUT


EXPECTED_OUTPUT = [
    "hello caller-service, you said 'hi'",
    "caller-service #0",
    "caller-service #1",
    "caller-service #2",
    "without a token: UNAUTHENTICATED TOKEN_MISSING",
]


async def run_example(
    public: str, admin: str, *, python: str = sys.executable, cwd: Path | None = None
) -> tuple[str, int | None]:
    """Callee then caller, with `python` (another venv's, for the installed-wheel test)."""
    callee = await asyncio.create_subprocess_exec(
        python,
        str(EXAMPLE / "callee.py"),
        "--listen",
        "127.0.0.1:0",
        "--sidecar",
        public,
        stdout=asyncio.subprocess.PIPE,
        cwd=cwd,
    )
    try:
        assert callee.stdout is not None
        banner = (await asyncio.wait_for(callee.stdout.readline(), 30)).decode()
        address = banner.split()[3]
        caller = await asyncio.create_subprocess_exec(
            python,
            str(EXAMPLE / "caller.py"),
            "--callee",
            address,
            "--admin",
            admin,
            stdout=asyncio.subprocess.PIPE,
            cwd=cwd,
        )
        out, _ = await asyncio.wait_for(caller.communicate(), 60)
    finally:
        callee.terminate()
        await callee.wait()
    return out.decode(), caller.returncode
