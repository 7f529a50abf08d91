"""Fixtures every test directory may use: private directories, a running sidecar, real Redis
(shared or private). Defined here once; a directory or module overrides one only where it needs
something different (say so where it does).

Redis-dependent tests skip when no Redis is reachable, except in CI: with
`AUTHSIDECAR_REQUIRE_REDIS=1` (`.ci/run` exports it) they fail instead, so a broken Redis
set-up can never turn the issue-3 proofs into silent skips.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.redis import REDIS_URL, RedisServer, redis_problem
from tests.support.redis_topologies import RedisClusterSet, SentinelSet
from tests.support.sidecar import RunningSidecar, running_sidecar, short_tmpdir


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A private directory for a sidecar's data (keys, SQLite), short enough for its sockets."""
    with short_tmpdir() as path:
        yield path


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A private directory for the test's own Unix sockets (proxies, fake sidecars)."""
    with short_tmpdir() as path:
        yield path


@pytest.fixture
async def sidecar(data_dir: Path) -> AsyncIterator[RunningSidecar]:
    """An in-process sidecar on embedded defaults, issuing for audiences svc-a and svc-b."""
    async with running_sidecar(data_dir, tokens={"audiences": ["svc-a", "svc-b"]}) as running:
        yield running


def _redis_missing(why: str) -> None:
    if os.environ.get("AUTHSIDECAR_REQUIRE_REDIS") == "1":
        pytest.fail(f"{why} (AUTHSIDECAR_REQUIRE_REDIS=1)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis. Never flush it: use a unique key prefix per test."""
    problem = redis_problem(REDIS_URL)
    if problem is not None:
        _redis_missing(problem)
    return REDIS_URL


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A private one-node Redis Cluster (it owns every slot), for the whole session."""
    with short_tmpdir() as workdir:
        try:
            server = RedisServer(workdir, persist=False, cluster=True)
        except FileNotFoundError as exc:
            _redis_missing(str(exc))
        server.start()
        try:
            yield server.url
        finally:
            server.kill()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port, which the test may stop and start again."""
    with short_tmpdir() as workdir:
        try:
            server = RedisServer(workdir)
        except FileNotFoundError as exc:
            _redis_missing(str(exc))
        server.start()
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSet]:
    """A private Sentinel deployment (primary, replica, three sentinels) for the whole
    session; never failed over (the failover tests start their own)."""
    with short_tmpdir() as workdir:
        try:
            deployment = SentinelSet(workdir)
        except FileNotFoundError as exc:
            _redis_missing(str(exc))
        try:
            deployment.start()
            yield deployment
        finally:
            deployment.stop()


@pytest.fixture(scope="session")
def redis_cluster3_url() -> Iterator[str]:
    """A private three-primary Redis Cluster (no replicas) for the whole session: the
    client follows the slot map over real nodes (issue 16)."""
    with short_tmpdir() as workdir:
        try:
            deployment = RedisClusterSet(workdir, primaries=3, replicas=0)
        except FileNotFoundError as exc:
            _redis_missing(str(exc))
        try:
            deployment.start()
            yield deployment.url
        finally:
            deployment.stop()
