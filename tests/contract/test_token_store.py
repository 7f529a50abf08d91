"""One contract, every `TokenStore` (fosite runs one case table over every storage).

`store` is parametrised over `_FACTORIES`: a new backend (Redis) is one entry there, plus a mark
in `_MARKS` if it needs a server. Backend-specific tests (SQLite shared by threads, processes,
and a SIGKILL) follow the contract, named `test_sqlite_*`.

Racing presenters (see `sidecar.store.base`): of N rotates of one current token, one ROTATED,
and then, without a grace window, one REUSED (the first loser presents a retired token, which
revokes the family: RFC 9700 section 4.14.2) and the rest REVOKED; within a grace window every
loser gets GRACE and the winner's successor, and a replay after the window is REUSED.

Redis runs against the shared server under a key prefix unique to the test (only those keys are
deleted afterwards), with a fixed clock for its TTLs.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import sqlite3
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.clock import FixedClock
from sidecar.config import StoreSettings
from sidecar.errors import StoreUnavailableError
from sidecar.store.base import FamilyRecord, Revocation, RotateOutcome, TokenStore
from sidecar.store.memory import MemoryTokenStore
from sidecar.store.redis import RedisTokenStore
from sidecar.store.redis_connect import RedisConnector
from sidecar.store.sqlite import SCHEMA_VERSION, SqliteTokenStore
from tests.support.redis import delete_prefix, unique_prefix

NOW = 1_700_000_000
ISS = "https://issuer.test"
REPO_ROOT = Path(__file__).resolve().parents[2]


async def _sqlite(path: str | Path) -> SqliteTokenStore:
    store = SqliteTokenStore(path)
    await store.open()
    return store


def redis_store(url: str, prefix: str, now: int = NOW, mode: str = "standalone") -> RedisTokenStore:
    settings = StoreSettings.model_validate(
        {
            "backend": "redis",
            "redis_url": url,
            "redis_key_prefix": prefix,
            "redis_mode": mode,
            "redis_timeout_s": 5,  # a loaded CI machine is slow, not down
        }
    )
    return RedisTokenStore(RedisConnector(settings), clock=FixedClock(now), key_prefix=prefix)


async def _memory(request: pytest.FixtureRequest, _: Path) -> TokenStore:
    return MemoryTokenStore()


async def _sqlite_memory(request: pytest.FixtureRequest, _: Path) -> TokenStore:
    return await _sqlite(":memory:")


async def _sqlite_file(request: pytest.FixtureRequest, tmp_path: Path) -> TokenStore:
    return await _sqlite(tmp_path / "state" / "tokens.db")


async def _redis(request: pytest.FixtureRequest, _: Path) -> TokenStore:
    url = str(request.getfixturevalue("redis_url"))
    prefix = unique_prefix()
    request.addfinalizer(lambda: delete_prefix(url, prefix))
    return redis_store(url, prefix)


async def _redis_cluster(request: pytest.FixtureRequest, _: Path) -> TokenStore:
    """Cluster addressing against a one-node Cluster: CROSSSLOT is enforced as on many."""
    url = str(request.getfixturevalue("redis_cluster_url"))
    return redis_store(url, unique_prefix(), mode="cluster")


_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], Awaitable[TokenStore]]] = {
    "memory": _memory,
    "sqlite-memory": _sqlite_memory,
    "sqlite-file": _sqlite_file,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
}
_MARKS: dict[str, pytest.MarkDecorator] = {
    "redis": pytest.mark.redis,
    "redis-cluster": pytest.mark.redis,
}


@pytest.fixture(params=[pytest.param(k, marks=_MARKS.get(k, ())) for k in _FACTORIES])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    opened = await _FACTORIES[str(request.param)](request, tmp_path)
    yield opened
    await opened.close()


def _family(
    family_id: str = "fam-1", jti: str = "j0", expires_at: int = NOW + 3600
) -> FamilyRecord:
    return FamilyRecord(
        family_id=family_id,
        issuer=ISS,
        subject="spiffe://example.org/ns/a/sa/b",
        audience=("orders", "bäckerei"),
        scope="read write",
        client_id="client-1",
        claims_json='{"tenant":"t1"}',
        created_at=NOW,
        expires_at=expires_at,
        current_jti=jti,
    )


# --- the contract ----------------------------------------------------------------------------


async def test_create_then_get_returns_the_family(store: TokenStore) -> None:
    await store.create_family(_family())
    assert await store.get_family("fam-1") == _family()
    assert await store.get_family("fam-2") is None


async def test_create_refuses_a_taken_family_id(store: TokenStore) -> None:
    await store.create_family(_family())
    with pytest.raises(ValueError):
        await store.create_family(_family(jti="other"))
    assert await store.get_family("fam-1") == _family()


async def test_rotate_current_jti_rotates_and_updates_current(store: TokenStore) -> None:
    await store.create_family(_family())
    result = await store.rotate("fam-1", "j0", "j1", NOW + 7)
    assert result.outcome is RotateOutcome.ROTATED
    assert result.family is not None and result.family.current_jti == "j1"
    assert (result.family.previous_jti, result.family.rotated_at) == ("j0", NOW + 7)
    assert await store.get_family("fam-1") == result.family


async def test_retired_jti_within_grace_gets_the_same_successor(store: TokenStore) -> None:
    await store.create_family(_family())
    rotated = await store.rotate("fam-1", "j0", "j1", NOW, grace_s=5)
    for retry_at in (NOW, NOW + 4):
        retry = await store.rotate("fam-1", "j0", "never-used", retry_at, grace_s=5)
        assert retry.outcome is RotateOutcome.GRACE
        assert retry.family == rotated.family  # nothing changed: j1 is still the successor
    assert await store.get_family("fam-1") == rotated.family
    # The successor rotates normally, and then j0 is two rotations old: reuse.
    assert (await store.rotate("fam-1", "j1", "j2", NOW + 4, 5)).outcome is RotateOutcome.ROTATED
    late = await store.rotate("fam-1", "j0", "j3", NOW + 4, grace_s=5)
    assert late.outcome is RotateOutcome.REUSED


async def test_retired_jti_after_grace_is_reuse_and_revokes_family(store: TokenStore) -> None:
    await store.create_family(_family())
    await store.rotate("fam-1", "j0", "j1", NOW, grace_s=5)
    result = await store.rotate("fam-1", "j0", "j2", NOW + 5, grace_s=5)
    assert result.outcome is RotateOutcome.REUSED
    assert result.family is not None and result.family.revoked
    assert await store.revocations(NOW + 5) == [Revocation("family", ISS, "fam-1", NOW + 3600)]
    retry = await store.rotate("fam-1", "j0", "j2", NOW + 5, grace_s=5)
    assert retry.outcome is RotateOutcome.REVOKED


async def test_grace_never_revives_a_revoked_family(store: TokenStore) -> None:
    await store.create_family(_family())
    await store.rotate("fam-1", "j0", "j1", NOW, grace_s=5)
    await store.revoke(Revocation("family", ISS, "fam-1", NOW + 3600))
    retry = await store.rotate("fam-1", "j0", "j2", NOW + 1, grace_s=5)
    assert retry.outcome is RotateOutcome.REVOKED


async def test_rotate_retired_jti_is_reuse_and_revokes_family(store: TokenStore) -> None:
    await store.create_family(_family())
    await store.rotate("fam-1", "j0", "j1", NOW)
    result = await store.rotate("fam-1", "j0", "j2", NOW + 1)
    assert result.outcome is RotateOutcome.REUSED
    assert result.family is not None and result.family.revoked
    assert await store.get_family("fam-1") == result.family
    assert await store.revocations(NOW + 1) == [Revocation("family", ISS, "fam-1", NOW + 3600)]
    # The thief's successor is dead too: the whole family is.
    assert (await store.rotate("fam-1", "j1", "j3", NOW + 2)).outcome is RotateOutcome.REVOKED


async def test_rotate_on_revoked_family_is_refused(store: TokenStore) -> None:
    await store.create_family(_family())
    await store.revoke(Revocation("family", ISS, "fam-1", NOW + 3600))
    result = await store.rotate("fam-1", "j0", "j1", NOW)
    assert result.outcome is RotateOutcome.REVOKED
    assert result.family is not None and result.family.current_jti == "j0"


async def test_rotate_unknown_family_is_unknown(store: TokenStore) -> None:
    result = await store.rotate("nope", "j0", "j1", NOW)
    assert (result.outcome, result.family) == (RotateOutcome.UNKNOWN, None)


async def test_rotate_at_or_after_expiry_is_refused(store: TokenStore) -> None:
    await store.create_family(_family(expires_at=NOW + 10))
    assert (await store.rotate("fam-1", "j0", "j1", NOW + 10)).outcome is RotateOutcome.REVOKED
    assert (await store.rotate("fam-1", "j0", "j1", NOW + 99)).outcome is RotateOutcome.REVOKED
    family = await store.get_family("fam-1")
    assert family is not None and (family.current_jti, family.revoked) == ("j0", False)
    assert (await store.rotate("fam-1", "j0", "j1", NOW + 9)).outcome is RotateOutcome.ROTATED


async def test_revoke_jti_is_idempotent_and_keeps_the_later_expiry(store: TokenStore) -> None:
    for expires_at in (NOW + 60, NOW + 60, NOW + 120, NOW + 30):
        await store.revoke(Revocation("jti", ISS, "a1", expires_at))
    assert await store.revocations(NOW) == [Revocation("jti", ISS, "a1", NOW + 120)]


async def test_revocations_are_keyed_by_kind_issuer_and_key(store: TokenStore) -> None:
    wanted = {
        Revocation("jti", ISS, "x", NOW + 60),
        Revocation("jti", "https://other.test", "x", NOW + 60),
        Revocation("family", ISS, "x", NOW + 60),
    }
    for revocation in wanted:
        await store.revoke(revocation)
    assert set(await store.revocations(NOW)) == wanted


async def test_revoke_family_marks_the_family_revoked(store: TokenStore) -> None:
    await store.create_family(_family())
    await store.revoke(Revocation("family", ISS, "fam-1", NOW + 3600))
    await store.revoke(Revocation("family", ISS, "no-such-family", NOW + 60))
    family = await store.get_family("fam-1")
    assert family is not None and family.revoked
    assert len(await store.revocations(NOW)) == 2


async def test_revocations_drop_expired_entries_and_ended_families(store: TokenStore) -> None:
    await store.create_family(_family("ends-soon", expires_at=NOW + 10))
    await store.create_family(_family("lives-on", expires_at=NOW + 1000))
    for i in range(20):
        await store.revoke(Revocation("jti", ISS, f"old-{i}", NOW + 10))
    await store.revoke(Revocation("jti", ISS, "live", NOW + 1000))
    assert len(await store.revocations(NOW)) == 21
    live = [Revocation("jti", ISS, "live", NOW + 1000)]
    assert await store.revocations(NOW + 10) == live
    # Purged, not merely filtered: asking about an earlier instant cannot bring them back.
    assert await store.revocations(NOW) == live
    assert await store.get_family("ends-soon") is None
    assert await store.get_family("lives-on") is not None


async def test_concurrent_rotates_within_grace_rotate_once_and_share_the_successor(
    store: TokenStore,
) -> None:
    await store.create_family(_family())
    results = await asyncio.gather(
        *(store.rotate("fam-1", "j0", f"next-{i}", NOW, grace_s=5) for i in range(50))
    )
    counts = collections.Counter(r.outcome for r in results)
    assert counts == {RotateOutcome.ROTATED: 1, RotateOutcome.GRACE: 49}, counts
    successors = {r.family.current_jti for r in results if r.family is not None}
    assert len(successors) == 1 and successors != {"j0"}
    # After the window the same token is reuse, and the family dies.
    late = await store.rotate("fam-1", "j0", "late", NOW + 5, grace_s=5)
    assert late.outcome is RotateOutcome.REUSED
    family = await store.get_family("fam-1")
    assert family is not None and family.revoked


async def test_concurrent_rotates_of_one_token_rotate_exactly_once(store: TokenStore) -> None:
    await store.create_family(_family())
    results = await asyncio.gather(
        *(store.rotate("fam-1", "j0", f"next-{i}", NOW) for i in range(50))
    )
    _assert_one_winner([r.outcome for r in results])
    family = await store.get_family("fam-1")
    winner = next(r for r in results if r.outcome is RotateOutcome.ROTATED)
    assert family is not None and family.revoked
    assert winner.family is not None and family.current_jti == winner.family.current_jti


_OPERATIONS: dict[str, Callable[[TokenStore], Awaitable[object]]] = {
    "ping": lambda s: s.ping(),
    "create_family": lambda s: s.create_family(_family("fam-2")),
    "get_family": lambda s: s.get_family("fam-1"),
    "rotate": lambda s: s.rotate("fam-1", "j0", "j1", NOW),
    "open_revocation_feed": lambda s: s.open_revocation_feed(),
    "revoke": lambda s: s.revoke(Revocation("jti", ISS, "a", NOW + 1)),
    "revocations": lambda s: s.revocations(NOW),
}


@pytest.mark.parametrize("operation", list(_OPERATIONS))
async def test_closed_store_is_unavailable(store: TokenStore, operation: str) -> None:
    await store.create_family(_family())
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreUnavailableError):
        await _OPERATIONS[operation](store)


def _assert_one_winner(outcomes: list[RotateOutcome]) -> None:
    counts = collections.Counter(outcomes)
    assert counts[RotateOutcome.ROTATED] == 1, counts
    assert counts[RotateOutcome.REUSED] == 1, counts
    assert counts[RotateOutcome.REVOKED] == len(outcomes) - 2, counts


# --- SQLite: several connections, processes, crashes ------------------------------------------

# Each child opens the file, says "ready", waits for "go" on stdin, rotates, prints the outcome.
_RACE_CHILD = """
import asyncio, sys
from sidecar.store.sqlite import SqliteTokenStore

async def main() -> None:
    path, family_id, presented, next_jti, now = sys.argv[1:]
    store = SqliteTokenStore(path)
    await store.open()
    print("ready", flush=True)
    sys.stdin.readline()
    result = await store.rotate(family_id, presented, next_jti, int(now))
    print(result.outcome.name, flush=True)
    await store.close()

asyncio.run(main())
"""

# Rotates j{i} -> j{i+1} forever, printing "try N" before and "done N" after each commit.
_ROTATE_FOREVER_CHILD = """
import asyncio, sys
from sidecar.store.sqlite import SqliteTokenStore

async def main() -> None:
    path, family_id, start, now = sys.argv[1:]
    store = SqliteTokenStore(path)
    await store.open()
    i = int(start)
    while True:
        print(f"try {i + 1}", flush=True)
        result = await store.rotate(family_id, f"j{i}", f"j{i + 1}", int(now))
        if result.outcome.name != "ROTATED":
            print(f"failed {result.outcome.name}", flush=True)
            return
        i += 1
        print(f"done {i}", flush=True)

asyncio.run(main())
"""


async def _spawn(script: str, *args: str | Path | int) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, *map(str, args),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT, env=env,
    )  # fmt: skip


@pytest.fixture
async def db_path(tmp_path: Path) -> Path:
    """A file store holding `_family()`, closed again so each test opens its own connections."""
    path = tmp_path / "tokens.db"
    store = await _sqlite(path)
    await store.create_family(_family())
    await store.close()
    return path


async def test_sqlite_two_connections_rotate_exactly_once(db_path: Path) -> None:
    first, second = await _sqlite(db_path), await _sqlite(db_path)
    try:
        results = await asyncio.gather(
            *((first, second)[i % 2].rotate("fam-1", "j0", f"n{i}", NOW) for i in range(50))
        )
    finally:
        await first.close()
        await second.close()
    _assert_one_winner([r.outcome for r in results])


async def test_sqlite_processes_racing_on_one_file_rotate_exactly_once(db_path: Path) -> None:
    children = [await _spawn(_RACE_CHILD, db_path, "fam-1", "j0", f"n{i}", NOW) for i in range(6)]
    for child in children:
        assert child.stdout is not None
        assert await child.stdout.readline() == b"ready\n"
    outputs = await asyncio.gather(*(child.communicate(b"go\n") for child in children))
    assert [child.returncode for child in children] == [0] * len(children)
    _assert_one_winner([RotateOutcome[out.decode().strip()] for out, _ in outputs])


async def test_sqlite_sigkill_mid_rotate_leaves_old_or_new_state(db_path: Path) -> None:
    rng = random.Random()  # a random kill moment, not a secret
    current = 0
    for _ in range(3):
        child = await _spawn(_ROTATE_FOREVER_CHILD, db_path, "fam-1", current, NOW)
        assert child.stdout is not None
        first = await child.stdout.readline()  # "try": the child is inside its loop
        lines = [first, await child.stdout.readline()]
        reader = asyncio.create_task(child.stdout.read())
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        child.kill()  # SIGKILL on POSIX
        lines += (await reader).splitlines()
        assert await child.wait() == -9
        done = [int(line.split()[1]) for line in lines if line.startswith(b"done")]
        assert done and not any(line.startswith(b"failed") for line in lines)
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        raw.close()
        store = await _sqlite(db_path)
        family = await store.get_family("fam-1")
        await store.close()
        # Committed but not yet reported is allowed; half a rotation or a revoked family is not.
        assert family is not None and not family.revoked
        assert family.current_jti in (f"j{done[-1]}", f"j{done[-1] + 1}")
        current = int(family.current_jti[1:])


async def test_sqlite_waits_off_the_event_loop_then_gives_up_when_locked(db_path: Path) -> None:
    store = SqliteTokenStore(db_path, busy_timeout_ms=300)
    await store.open()
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        assert await store.get_family("fam-1") is not None  # WAL: readers are not blocked
        with pytest.raises(StoreUnavailableError):
            await store.rotate("fam-1", "j0", "j1", NOW)
        assert ticks >= 10  # the loop kept running while the worker waited ~300 ms
        locker.execute("ROLLBACK")
        assert (await store.rotate("fam-1", "j0", "j1", NOW)).outcome is RotateOutcome.ROTATED
    finally:
        ticker.cancel()
        locker.close()
        await store.close()


async def test_sqlite_creates_private_files_and_versioned_schema(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state" / "tokens.db"
    store = await _sqlite(path)
    await store.create_family(_family())
    await store.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for produced in path.parent.iterdir():  # tokens.db and any -wal / -shm beside it
        assert stat.S_IMODE(produced.stat().st_mode) == 0o600, produced.name
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert raw.execute("SELECT audience FROM families").fetchone() == (
            '["orders", "b\\u00e4ckerei"]',
        )
    finally:
        raw.close()


async def test_sqlite_refuses_a_newer_schema(db_path: Path) -> None:
    raw = sqlite3.connect(db_path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreUnavailableError):
        await _sqlite(db_path)


async def test_sqlite_unusable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreUnavailableError):
        await _sqlite(tmp_path / "a-file" / "tokens.db")  # parent is not a directory
    unopened = SqliteTokenStore(tmp_path / "tokens.db")
    with pytest.raises(StoreUnavailableError):
        await unopened.ping()
