"""A start on defaults imports only what it runs (issue 16: about half a second of CPU was
the interpreter and its imports on every start, a fifth of it the Redis client).

Each case starts the real app in a fresh interpreter (modules already imported by this test
process would hide the difference), stops it, and reports which optional modules it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.sidecar import short_tmpdir

# Imported only by the feature that needs it: the Redis store, `metrics.listen`, a YAML
# config file, and the CLI commands that call a sidecar.
OPTIONAL = ("redis", "prometheus_client", "yaml", "authsidecar.client")

_SCRIPT = """
import asyncio, json, sys
import sidecar.cli
from sidecar.app import start_app
from sidecar.config import load_settings

async def main():
    settings = load_settings(
        sys.argv[2] if sys.argv[2] != "-" else None,
        data_dir=sys.argv[1],
        listen={"tcp": "127.0.0.1:0", "drain_s": 0},
        **json.loads(sys.argv[3]),
    )
    app = await start_app(settings)
    await app.stop()

asyncio.run(main())
print(json.dumps(sorted(m for m in json.loads(sys.argv[4]) if m in sys.modules)))
"""


def _loaded_by_start(data_dir: Path, config: str = "-", **overrides: object) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(data_dir), config, json.dumps(overrides)]
        + [json.dumps(OPTIONAL)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: list[str] = json.loads(done.stdout.splitlines()[-1])
    return loaded


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_a_start_on_defaults_loads_no_optional_module(backend: str) -> None:
    with short_tmpdir() as tmp:
        assert _loaded_by_start(tmp, store={"backend": backend}) == []


def test_metrics_and_a_yaml_file_load_their_modules_when_asked_for() -> None:
    with short_tmpdir() as tmp:
        config = tmp / "sidecar.yaml"
        config.write_text("metrics:\n  listen: 127.0.0.1:0\n")
        loaded = _loaded_by_start(tmp, str(config))
    assert loaded == ["prometheus_client", "yaml"]
