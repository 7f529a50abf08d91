"""clients/node as a package a service installs: proto inside, types, `npm pack`, docs.

* The package's copy of auth.proto is byte-identical to protos/ (no node needed for that).
* `npm pack`, then `npm install <tarball>` into an empty directory outside the repository,
  then Node scripts there (CommonJS and ES module) call a live sidecar: Issue over the admin
  socket, Verify of that token, and the ErrorInfo reason of a bad token.
* The Node snippets of clients/README.md run as pasted from that directory, and print what
  their `// comments` say.
* The TypeScript declarations compile a consumer of every export (`npm run typecheck`).
* prom-client, an optional peer dependency, is not installed with the package.
Without node and npm these are skipped, unless AUTHSIDECAR_REQUIRE_NODE=1 (CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.node import node_tools as _tools
from tests.support.sidecar import RunningSidecar, running_sidecar

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "clients" / "node"
README = REPO / "clients" / "README.md"
PROTO = "authsidecar/v1/auth.proto"


def test_node_package_ships_the_contract_unchanged() -> None:
    shipped = NODE_DIR / "proto" / PROTO
    assert shipped.read_bytes() == (REPO / "protos" / PROTO).read_bytes(), (
        "clients/node/proto differs from protos/: run node clients/node/scripts/sync-proto.js"
    )


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """An empty project outside the repository with the packed tarball installed in it."""
    node, npm = _tools()
    del node
    with tempfile.TemporaryDirectory(prefix="asn-pack-") as tmp:
        root = Path(tmp)
        packed = subprocess.run(
            [npm, "pack", "--json", "--pack-destination", str(root)],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        info = json.loads(packed.stdout)[0]
        files = {f["path"] for f in info["files"]}
        assert f"proto/{PROTO}" in files
        assert {"src/index.js", "src/index.mjs", "src/index.d.ts", "package.json"} <= files
        assert "LICENSE" in files, "the Apache-2.0 text named by package.json must be packed"
        assert not any(f.startswith("test/") for f in files), "tests must not be packed"
        project = root / "service"
        project.mkdir()
        (project / "package.json").write_text('{"name": "service", "private": true}\n')
        subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefer-offline",
                str(root / info["filename"]),
            ],
            cwd=project,
            check=True,
            capture_output=True,
            timeout=300,
        )
        # prom-client is an optional peer dependency: a service that does not ask for it
        # does not get it, and everything below runs without it.
        assert not (project / "node_modules" / "prom-client").exists()
        yield project


async def _node(project: Path, script: str, suffix: str, env: dict[str, str]) -> str:
    path = project / f"script{suffix}"
    path.write_text(script)
    proc = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(path),
        cwd=project,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


_CALLS = """
const admin = new AuthClient(process.env.ADMIN);
const sidecar = new AuthClient(process.env.PUBLIC);
const grant = await admin.issue({ subject: 'svc', audience: ['svc-a'], scope: 'read' });
const claims = await sidecar.verify(grant.accessToken, { audience: 'svc-a' });
let refused;
try { await sidecar.verify('not.a.jwt'); } catch (error) { refused = error; }
console.log(JSON.stringify({ sub: claims.sub, aud: claims.aud, code: refused.code,
  grpcCode: refused.grpcCode, reason: refused.reason,
  isError: refused instanceof AuthClientError }));
admin.close();
sidecar.close();
"""


async def test_packed_tarball_installs_and_calls_a_live_sidecar(
    installed: Path, data_dir: Path
) -> None:
    expected = {
        "sub": "svc",
        "aud": ["svc-a"],
        "code": "UNAUTHENTICATED",
        "grpcCode": 16,
        "reason": "TOKEN_MALFORMED",
        "isError": True,
    }
    cjs = (
        "const { AuthClient, AuthClientError } = require('@authsidecar/client');\n"
        f"(async () => {{{_CALLS}}})().catch((e) => {{ console.error(e); process.exit(1); }});\n"
    )
    esm = f"import {{ AuthClient, AuthClientError }} from '@authsidecar/client';\n{_CALLS}"
    async with running_sidecar(data_dir) as sidecar:
        env = {"ADMIN": sidecar.admin_target, "PUBLIC": sidecar.tcp_target}
        for script, suffix in ((cjs, ".cjs"), (esm, ".mjs")):
            out = await _node(installed, script, suffix, env)
            assert json.loads(out) == expected


def _node_snippets() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text[text.index("## Node.js") :]
    following = section.find("\n## ", 1)
    section = section if following < 0 else section[:following]
    blocks = re.findall(r"```(js|mjs)\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the Node section lost its snippets"
    return [(".cjs" if lang == "js" else ".mjs", body) for lang, body in blocks]


def _printed_expectations(snippet: str) -> list[str]:
    return re.findall(r"console\.log\(.*\); // (.+)$", snippet, re.M)


async def _run_snippets(installed: Path, sidecar: RunningSidecar) -> None:
    env = {"AUTHSIDECAR_ADDR": sidecar.tcp_target, "AUTHSIDECAR_ADMIN_ADDR": sidecar.admin_target}
    for suffix, snippet in _node_snippets():
        out = await _node(installed, snippet, suffix, env)
        expected = _printed_expectations(snippet)
        assert expected, "each snippet says what it prints"
        assert out.splitlines() == expected, snippet


async def test_readme_node_snippets_run_as_pasted(installed: Path, data_dir: Path) -> None:
    async with running_sidecar(data_dir, tokens={"audiences": ["orders"]}) as sidecar:
        await _run_snippets(installed, sidecar)


@pytest.mark.timeout(300)
def test_node_type_declarations_compile_a_consumer() -> None:
    _node_tool, npm = _tools()
    if not (NODE_DIR / "node_modules" / "typescript").is_dir():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300
        )
    result = subprocess.run(
        [npm, "run", "--silent", "typecheck"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
