"""Several `python -m sidecar serve` processes sharing one Redis and one signing key.

Each process gets its own short data directory (Unix socket paths are limited to 107 bytes),
listens on TCP port 0, and is found through the banner it prints at start. stderr goes to a
file in its data directory, so a chatty process can never block on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsidecar.v1 import auth_pb2_grpc
from tests.support.keys import write_jwk_file

__all__ = ["Fleet", "SidecarProcess", "fleet", "health_of", "start_sidecar"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BANNER = re.compile(r"authsidecar serving .* tcp=(\S+) admin=(\S+)")


@dataclass
class SidecarProcess:
    proc: asyncio.subprocess.Process
    data_dir: Path
    tcp: str
    admin: str
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    _by_target: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    @property
    def stub(self) -> auth_pb2_grpc.AuthServiceAsyncStub:
        return auth_pb2_grpc.AuthServiceStub(self._channel(self.tcp))

    @property
    def admin_stub(self) -> auth_pb2_grpc.AuthServiceAsyncStub:
        target = f"unix:{self.admin}"
        return auth_pb2_grpc.AuthServiceStub(self._channel(target))

    def _channel(self, target: str) -> grpc.aio.Channel:
        """One channel per target, reused by every stub (a channel per call is slow)."""
        channel = self._by_target.get(target)
        if channel is None:
            channel = self._by_target[target] = grpc.aio.insecure_channel(target)
            self.channels.append(channel)
        return channel

    def log(self) -> str:
        path = self.data_dir / "stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def close_channels(self) -> None:
        for channel in self.channels:
            await channel.close()
        self.channels.clear()
        self._by_target.clear()

    async def stop(self) -> None:
        await self.close_channels()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def start_sidecar(data_dir: Path, env: Mapping[str, str]) -> SidecarProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}
    full_env.update(
        PYTHONPATH=str(REPO_ROOT),
        AUTHSIDECAR_DATA_DIR=str(data_dir),
        AUTHSIDECAR_LISTEN__TCP="127.0.0.1:0",
        AUTHSIDECAR_LISTEN__GRACE_PERIOD_S="1",
        AUTHSIDECAR_LISTEN__DRAIN_S="0",  # stopped by tests, not by a rollout
        AUTHSIDECAR_LOG_LEVEL="WARNING",
    )
    full_env.update(env)
    with (data_dir / "stderr.log").open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve",
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=full_env, cwd=REPO_ROOT,
        )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except TimeoutError:
        line = b""
    match = BANNER.search(line.decode(errors="replace"))
    if match is None:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        log = (data_dir / "stderr.log").read_text(errors="replace")
        raise RuntimeError(f"sidecar did not start: {line!r}\n{log}")
    return SidecarProcess(proc, data_dir, match.group(1), match.group(2))


@dataclass
class Fleet:
    sidecars: list[SidecarProcess]
    key_file: Path
    env: dict[str, str]
    root: Path

    async def restart(self, index: int) -> SidecarProcess:
        """Start a fresh process in place of sidecar `index` (after it was killed)."""
        old = self.sidecars[index]
        await old.close_channels()
        shutil.rmtree(old.data_dir / "run", ignore_errors=True)
        self.sidecars[index] = await start_sidecar(old.data_dir, self.env)
        return self.sidecars[index]


@contextlib.asynccontextmanager
async def fleet(count: int, redis_url: str, prefix: str, **settings: str) -> AsyncIterator[Fleet]:
    """`count` sidecars on one Redis under key prefix `prefix`; `settings` are extra
    AUTHSIDECAR_* variables (e.g. TOKENS__REFRESH_GRACE_S="2")."""
    root = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    key_file = write_jwk_file(root, "ES256", "fleet-key")
    env = {
        "AUTHSIDECAR_KEYS__FILES": str(key_file),
        "AUTHSIDECAR_STORE__BACKEND": "redis",
        "AUTHSIDECAR_STORE__REDIS_URL": redis_url,
        "AUTHSIDECAR_STORE__REDIS_KEY_PREFIX": prefix,
        "AUTHSIDECAR_STORE__REDIS_TIMEOUT_S": "2",
        **{f"AUTHSIDECAR_{name}": value for name, value in settings.items()},
    }
    dirs = []
    for i in range(count):
        path = root / f"s{i}"
        path.mkdir()
        dirs.append(path)
    started = await asyncio.gather(*(start_sidecar(d, env) for d in dirs), return_exceptions=True)
    running = Fleet([s for s in started if isinstance(s, SidecarProcess)], key_file, env, root)
    try:
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        yield running
    finally:
        for sidecar in running.sidecars:
            await sidecar.stop()
        shutil.rmtree(root, ignore_errors=True)


async def health_of(target: str, service: str) -> int:
    """The grpc.health.v1 status of `service` at `target` (a SERVING/NOT_SERVING number)."""
    async with grpc.aio.insecure_channel(target) as channel:
        # The generated stub's .pyi declares no aio methods.
        stub: Any = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status: int = reply.status
        return status
