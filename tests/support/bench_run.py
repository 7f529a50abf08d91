"""Run one part of the benchmark (`python -m bench --quick --only NAME`) as a test would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def quick_section(name: str, out: Path, *args: str, timeout_s: float = 580) -> dict[str, Any]:
    """Run the section in --quick mode writing into `out`; fail with its output's tail if it
    exits non-zero; return `out/NAME.json`."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", name, "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    document: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    return document
