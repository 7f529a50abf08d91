"""A sidecar restarted from its local revocation snapshot (issue 16), real processes, on SQLite
and on Redis (the shared one, under a unique key prefix).

The snapshot may only ever add revocations the store has or had: a revocation written by
another sidecar while this one was down (after its snapshot) is refused after the restart,
and a snapshot of a store that has since lost its data (a new epoch) is ignored: the restart
then holds what the store holds, as a start without a snapshot would, and writes nothing back.
Whether the snapshot was used is read from the sidecar's own log line (INFO)."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from authsidecar.v1 import auth_pb2
from tests.support.fleet import SidecarProcess, start_sidecar
from tests.support.fleet_calls import REVOKED, issue, until_refused, verify
from tests.support.keys import write_jwk_file
from tests.support.redis import delete_prefix, unique_prefix
from tests.support.sidecar import short_tmpdir

SNAPSHOT = "revocations.snapshot"
USED = "from the snapshot"
IGNORED = "is of another store or epoch: ignored"


class Deployment:
    """Sidecars sharing one store and one signing key, each with its own data directory."""

    def __init__(self, root: Path, env: dict[str, str], wipe_store: Callable[[], None]) -> None:
        self.root, self.env, self.wipe_store = root, env, wipe_store

    async def start(self, name: str) -> SidecarProcess:
        data = self.root / name
        data.mkdir(exist_ok=True)
        shutil.rmtree(data / "run", ignore_errors=True)  # a restart in place
        return await start_sidecar(data, self.env)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    with short_tmpdir() as root:
        env = {
            "AUTHSIDECAR_KEYS__FILES": str(write_jwk_file(root, "ES256", "snapshot-key")),
            "AUTHSIDECAR_LOG_LEVEL": "INFO",
            "AUTHSIDECAR_STORE__SYNC_INTERVAL_S": "60",  # the restart, not a poll, loads
        }
        if request.param == "sqlite":
            db = root / "shared.db"
            env["AUTHSIDECAR_STORE__SQLITE_PATH"] = str(db)

            def wipe_sqlite() -> None:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)

            yield Deployment(root, env, wipe_sqlite)
            return
        url: str = request.getfixturevalue("redis_url")
        prefix = unique_prefix()
        env.update(
            AUTHSIDECAR_STORE__BACKEND="redis",
            AUTHSIDECAR_STORE__REDIS_URL=url,
            AUTHSIDECAR_STORE__REDIS_KEY_PREFIX=prefix,
            AUTHSIDECAR_STORE__REDIS_TIMEOUT_S="2",
        )
        try:
            yield Deployment(root, env, lambda: delete_prefix(url, prefix))
        finally:
            delete_prefix(url, prefix)


async def _revoke(sidecar: SidecarProcess, token: str) -> None:
    await sidecar.stub.Revoke(auth_pb2.RevokeRequest(token=token), timeout=5)


async def test_a_revocation_written_after_the_snapshot_is_refused_after_a_restart(
    deployment: Deployment,
) -> None:
    a = await deployment.start("a")
    b = await deployment.start("b")
    try:
        first, second, live = [await issue(a) for _ in range(3)]
        await _revoke(a, first.access_token)
        await until_refused(a, first.access_token)
        await a.stop()  # writes the snapshot
        snapshot = a.data_dir / SNAPSHOT
        assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
        await _revoke(b, second.access_token)  # while a is down: after its snapshot

        a = await deployment.start("a")
        assert USED in a.log(), a.log()
        assert await verify(a, first.access_token) == REVOKED
        assert await verify(a, second.access_token) == REVOKED
        assert not isinstance(await verify(a, live.access_token), tuple)
    finally:
        await a.stop()
        await b.stop()


async def test_a_store_that_lost_its_data_ignores_the_snapshot(deployment: Deployment) -> None:
    a = await deployment.start("a")
    try:
        lost, kept = await issue(a), await issue(a)
        await _revoke(a, lost.access_token)
        await until_refused(a, lost.access_token)
        await a.stop()
        assert (a.data_dir / SNAPSHOT).exists()
        deployment.wipe_store()  # the store loses everything

        a = await deployment.start("a")
        assert IGNORED in a.log() and USED not in a.log(), a.log()
        # What the store holds, as a start without a snapshot: the lost revocation is not
        # brought back from the snapshot (nothing is written back from one).
        assert not isinstance(await verify(a, lost.access_token), tuple)
        await _revoke(a, kept.access_token)  # the new store works as before
        await until_refused(a, kept.access_token)
        await a.stop()
        a = await deployment.start("a")  # and the new snapshot is used
        assert USED in a.log(), a.log()
        assert await verify(a, kept.access_token) == REVOKED
        assert not isinstance(await verify(a, lost.access_token), tuple)
    finally:
        await a.stop()
