"""Docs that cannot drift (issue 14): every fenced block of README.md, clients/README.md and
docs/*.md is executed against a live `authsidecar serve` process, or carries a marker on the
line just before its fence saying why it is not run. A wrong flag, path or name fails here.

Markers (an HTML comment, invisible when rendered):
* `<!-- snippet: not run: REASON -->`: not executed; the reason must say why.
* `<!-- snippet: continues -->`: the block runs after the previous runnable block of the same
  language in the same file (it uses the names or shell variables that block defines).
* `<!-- snippet: fails: TEXT -->`: a shell block showing a refusal: it must exit non-zero and
  print TEXT.

Runners:
* `yaml` whose top-level keys are settings: loaded by `sidecar.config.load_settings` (what
  `authsidecar --config` uses) and must validate; other YAML must parse to a mapping.
* `sh`: run with `bash -euo pipefail` in a temporary directory laid out like the repository
  root a user types them in (`.venv` is this checkout's venv, `.authsidecar/` the live
  sidecar's data directory), with the venv's bin first on PATH. The documented default port
  127.0.0.1:50051 is rewritten to the live sidecar's free port; `$TOKEN` (defined by the
  README's first shell block) is exported as a fresh access token for `orders`.
* `python`: run by the venv's Python in that directory, top-level `await` allowed, with the
  names the prose around the snippets takes as given (`token`, `refresh_token`, `ADMIN`, ...).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sidecar.config import Settings, load_settings
from tests.support.sidecar import short_tmpdir

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "clients" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!-- snippet: (not run|continues|fails)(?::\s*(.*?))?\s*-->$")
BANNER = re.compile(r"authsidecar serving .* tcp=(\S+) admin=(\S+)")
DOC_PORT = "127.0.0.1:50051"
RUNNERS = ("sh", "python", "yaml")
TIMEOUT_S = 60

PYTHON_RUNNER = """
import ast, asyncio, os, sys
from authsidecar.client import AuthClient

ADMIN = os.environ["AUTHSIDECAR_ADMIN_ADDR"]
with AuthClient(ADMIN) as _admin:
    _grant = _admin.issue("alice", ["orders"], scope="orders:read", refresh_token=True)
    _billing = _admin.issue("alice", ["billing"], scope="orders:read")
token = token_a = _grant.access_token
token_b = _billing.access_token
refresh_token = _grant.refresh_token
sidecar = AuthClient()
source = open(sys.argv[1]).read()
code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)

async def _main():
    result = eval(code, globals())
    if asyncio.iscoroutine(result):
        await result

asyncio.run(_main())
"""


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    body: str
    markers: dict[str, str]  # marker kind -> its text, from the comment lines above the fence

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def _blocks() -> list[Block]:
    blocks = []
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        index = 0
        while index < len(lines):
            opening = FENCE.match(lines[index])
            if opening is None:
                index += 1
                continue
            end = index + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            assert end < len(lines), f"{doc.name}:{index + 1}: fence never closed"
            markers: dict[str, str] = {}
            above = index - 1
            while above >= 0 and (marker := MARKER.match(lines[above].strip())) is not None:
                markers[marker.group(1)] = marker.group(2) or ""
                above -= 1
            blocks.append(
                Block(
                    doc=doc,
                    line=index + 1,
                    lang=opening.group(1),
                    body="\n".join(lines[index + 1 : end]) + "\n",
                    markers=markers,
                )
            )
            index = end + 1
    return blocks


BLOCKS = _blocks()


@dataclass(frozen=True)
class LiveSidecar:
    workdir: Path
    tcp: str
    admin: str
    token: str


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}


@pytest.fixture(scope="module")
def live() -> Iterator[LiveSidecar]:
    """`authsidecar serve` run as the README runs it: from the directory, default data_dir."""
    with short_tmpdir() as workdir:
        (workdir / ".venv").symlink_to(Path(sys.executable).parents[1])
        env = _clean_env()
        env.update(
            AUTHSIDECAR_LISTEN__TCP="127.0.0.1:0",
            AUTHSIDECAR_LISTEN__DRAIN_S="0",
            AUTHSIDECAR_LISTEN__GRACE_PERIOD_S="2",
            AUTHSIDECAR_STORE__BACKEND="sqlite",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve"],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            match = BANNER.search(banner)
            if match is None:
                proc.kill()
                _, err = proc.communicate(timeout=15)
                pytest.fail(f"no banner; stdout={banner!r} stderr={err!r}")
            tcp, admin = match.group(1), f"unix:{match.group(2)}"
            from authsidecar.client import AuthClient

            with AuthClient(admin) as client:
                grant = client.issue("alice", ["orders"], scope="orders:read")
            yield LiveSidecar(workdir, tcp, admin, grant.access_token)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=15)


def _env(live: LiveSidecar) -> dict[str, str]:
    env = _clean_env()
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        AUTHSIDECAR_ADDR=live.tcp,
        AUTHSIDECAR_ADMIN_ADDR=live.admin,
        TOKEN=live.token,
    )
    return env


def _source(block: Block) -> str:
    """The block's text, after the previous runnable block it continues (recursively)."""
    if "continues" not in block.markers:
        return block.body
    earlier = [
        b
        for b in BLOCKS
        if b.doc == block.doc and b.line < block.line and b.lang == block.lang
        if "not run" not in b.markers
    ]
    assert earlier, f"{block.id} continues no earlier {block.lang} block"
    return _source(earlier[-1]) + block.body


def _run(args: list[str], live: LiveSidecar) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=live.workdir,
        env=_env(live),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def _check_yaml(block: Block, tmp: Path) -> None:
    document = yaml.safe_load(block.body)
    assert isinstance(document, dict), f"{block.id}: YAML is not a mapping"
    if not set(document) <= set(Settings.model_fields):
        return  # not sidecar settings (Kubernetes, Envoy): parsing is the check
    config = tmp / "snippet.yaml"
    config.write_text(block.body)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AUTHSIDECAR_")}
    try:
        load_settings(config)  # ConfigError (one line naming the setting) fails the test
    finally:
        os.environ.update(saved)


def test_every_doc_has_fenced_blocks_found() -> None:
    """The extraction sees each document's blocks (an empty list would pass everything)."""
    per_doc = {doc: sum(1 for b in BLOCKS if b.doc == doc) for doc in DOCS}
    assert all(per_doc[doc] > 0 for doc in DOCS[:2]), per_doc
    not_run = sum(1 for b in BLOCKS if "not run" in b.markers)
    assert not_run <= len(BLOCKS) // 2, "markers crowd out runs"


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_snippet_runs_or_says_why_not(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if "not run" in block.markers:
        reason = block.markers["not run"]
        assert len(reason) >= 10, f"{block.id}: a not-run marker needs its reason"
        for path, name in re.findall(r"(tests/\S+\.py)::(\w+)", reason):
            assert f"def {name}(" in (REPO / path).read_text(), f"{block.id}: {path}::{name}?"
        return
    assert block.lang in RUNNERS, (
        f"{block.id}: a ```{block.lang} block with no runner: make it runnable or precede it "
        "with <!-- snippet: not run: REASON -->"
    )
    if block.lang == "yaml":
        _check_yaml(block, tmp_path)
        return
    live: LiveSidecar = request.getfixturevalue("live")  # started once, for the first run
    script = tmp_path / ("snippet.sh" if block.lang == "sh" else "snippet.py")
    script.write_text(_source(block).replace(DOC_PORT, live.tcp))
    if block.lang == "sh":
        result = _run(["bash", "-euo", "pipefail", str(script)], live)
    else:
        runner = tmp_path / "runner.py"
        runner.write_text(PYTHON_RUNNER)
        result = _run([sys.executable, str(runner), str(script)], live)
    output = result.stdout + result.stderr
    if "fails" in block.markers:
        expected = block.markers["fails"]
        assert result.returncode != 0, f"{block.id} should fail:\n{output}"
        assert expected and expected in output, f"{block.id}:\n{output}"
    else:
        assert result.returncode == 0, f"{block.id} failed (exit {result.returncode}):\n{output}"
