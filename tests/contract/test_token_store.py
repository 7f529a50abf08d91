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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sidecar.clock import FixedClock
from sidecar.config import StoreSettings
from sidecar.errors import StoreDeadlineError, StoreUnavailableError
from sidecar.store.base import (
    FamilyRecord,
    Revocation,
    RevocationRow,
    RotateOutcome,
    RotateResult,
    Rotation,
    TokenStore,
)
from sidecar.store.memory import MemoryTokenStore
from sidecar.store.redis import RedisTokenStore
from sidecar.store.redis_connect import RedisConnector
from sidecar.store.sqlite import (
    _SCHEMA_V1,
    _SCHEMA_V2,
    _SCHEMA_V3,
    SCHEMA_VERSION,
    SqliteTokenStore,
)
from tests.support.redis import delete_prefix, unique_prefix
from tests.support.redis_topologies import SentinelSet

NOW = 1_700_000_000
ISS = "https://issuer.test"
SUB = "spiffe://example.org/ns/a/sa/b"
# Reuse revocations outlive the family by this much in these tests (the service passes the
# longest access-token lifetime plus leeway; 0 keeps the family's own end in the assertions).
EXTRA = 0
REPO_ROOT = Path(__file__).resolve().parents[2]


async def _sqlite(path: str | Path) -> SqliteTokenStore:
    store = SqliteTokenStore(path)
    await store.open()
    return store


def redis_store(
    url: str, prefix: str, now: int = NOW, mode: str = "standalone", **extra: str
) -> RedisTokenStore:
    settings = StoreSettings.model_validate(
        {
            "backend": "redis",
            "redis_url": url,
            "redis_key_prefix": prefix,
            "redis_mode": mode,
            "redis_timeout_s": 5,  # a loaded CI machine is slow, not down
            **extra,
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


async def _redis_cluster3(request: pytest.FixtureRequest, _: Path) -> TokenStore:
    """Cluster addressing against three primaries; the client is pointed at one node and
    finds the deployment's slot wherever it lives."""
    url = str(request.getfixturevalue("redis_cluster3_url"))
    return redis_store(url, unique_prefix(), mode="cluster")


async def _redis_sentinel(request: pytest.FixtureRequest, _: Path) -> TokenStore:
    """Sentinel addressing (issue 16): the master is found through three real sentinels."""
    deployment: SentinelSet = request.getfixturevalue("redis_sentinel")
    return redis_store(
        "redis://ignored:1/0",
        unique_prefix(),
        mode="sentinel",
        redis_sentinels=deployment.sentinels,
        redis_sentinel_master=deployment.master_name,
    )


async def _redis_sentinel_wait(request: pytest.FixtureRequest, _: Path) -> TokenStore:
    """Sentinel addressing with `redis_wait_replicas: 1`: every rotation and new family goes
    through the WAIT pipeline (issue 16)."""
    deployment: SentinelSet = request.getfixturevalue("redis_sentinel")
    return redis_store(
        "redis://ignored:1/0",
        unique_prefix(),
        mode="sentinel",
        redis_sentinels=deployment.sentinels,
        redis_sentinel_master=deployment.master_name,
        redis_wait_replicas="1",
    )


_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, Path], Awaitable[TokenStore]]] = {
    "memory": _memory,
    "sqlite-memory": _sqlite_memory,
    "sqlite-file": _sqlite_file,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
    "redis-cluster3": _redis_cluster3,
    "redis-sentinel": _redis_sentinel,
    "redis-sentinel-wait": _redis_sentinel_wait,
}
_MARKS: dict[str, pytest.MarkDecorator] = {
    "redis": pytest.mark.redis,
    "redis-cluster": pytest.mark.redis,
    "redis-cluster3": pytest.mark.redis,
    "redis-sentinel": pytest.mark.redis,
    "redis-sentinel-wait": pytest.mark.redis,
}


@pytest.fixture(params=[pytest.param(k, marks=_MARKS.get(k, ())) for k in _FACTORIES])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    opened = await _FACTORIES[str(request.param)](request, tmp_path)
    yield opened
    await opened.close()


def _later(seconds: float = 60.0) -> int:
    """A write deadline `seconds` from now, by the real clock (Redis compares with TIME;
    memory and SQLite with their SystemClock): store times (`now`) stay fixed at NOW."""
    return int((time.time() + seconds) * 1000)


async def _rotate(
    store: TokenStore,
    family_id: str,
    presented: str,
    next_jti: str,
    now: int,
    grace_s: int = 0,
    *,
    subject: str = SUB,
    issuer: str = ISS,
    scope: str = "",
    revoke_extra_s: int = EXTRA,
    deadline_ms: int | None = None,
) -> RotateResult:
    return await store.rotate(
        Rotation(
            family_id=family_id,
            presented_jti=presented,
            next_jti=next_jti,
            now=now,
            deadline_ms=_later() if deadline_ms is None else deadline_ms,
            subject=subject,
            issuer=issuer,
            scope=scope,
            grace_s=grace_s,
            revoke_extra_s=revoke_extra_s,
        )
    )


def _family(
    family_id: str = "fam-1", jti: str = "j0", expires_at: int = NOW + 3600
) -> FamilyRecord:
    return FamilyRecord(
        family_id=family_id,
        issuer=ISS,
        subject=SUB,
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
    await store.create_family(_family(), deadline_ms=_later())
    assert await store.get_family("fam-1") == _family()
    assert await store.get_family("fam-2") is None


async def test_create_refuses_a_taken_family_id(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    with pytest.raises(ValueError):
        await store.create_family(_family(jti="other"), deadline_ms=_later())
    assert await store.get_family("fam-1") == _family()


async def test_rotate_current_jti_rotates_and_updates_current(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    result = await _rotate(store, "fam-1", "j0", "j1", NOW + 7)
    assert result.outcome is RotateOutcome.ROTATED
    assert result.family is not None and result.family.current_jti == "j1"
    assert (result.family.previous_jti, result.family.rotated_at) == ("j0", NOW + 7)
    assert await store.get_family("fam-1") == result.family


async def test_retired_jti_within_grace_gets_the_same_successor(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    rotated = await _rotate(store, "fam-1", "j0", "j1", NOW, grace_s=5)
    for retry_at in (NOW, NOW + 4):
        retry = await _rotate(store, "fam-1", "j0", "never-used", retry_at, grace_s=5)
        assert retry.outcome is RotateOutcome.GRACE
        assert retry.family == rotated.family  # nothing changed: j1 is still the successor
    assert await store.get_family("fam-1") == rotated.family
    # The successor rotates normally, and then j0 is two rotations old: reuse.
    assert (await _rotate(store, "fam-1", "j1", "j2", NOW + 4, 5)).outcome is RotateOutcome.ROTATED
    late = await _rotate(store, "fam-1", "j0", "j3", NOW + 4, grace_s=5)
    assert late.outcome is RotateOutcome.REUSED


async def test_retired_jti_after_grace_is_reuse_and_revokes_family(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    await _rotate(store, "fam-1", "j0", "j1", NOW, grace_s=5)
    result = await _rotate(store, "fam-1", "j0", "j2", NOW + 5, grace_s=5)
    assert result.outcome is RotateOutcome.REUSED
    assert result.family is not None and result.family.revoked
    assert await store.revocations(NOW + 5) == [Revocation("family", ISS, "fam-1", NOW + 3600)]
    retry = await _rotate(store, "fam-1", "j0", "j2", NOW + 5, grace_s=5)
    assert retry.outcome is RotateOutcome.REVOKED


async def test_grace_never_revives_a_revoked_family(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    await _rotate(store, "fam-1", "j0", "j1", NOW, grace_s=5)
    await store.revoke(Revocation("family", ISS, "fam-1", NOW + 3600), deadline_ms=_later())
    retry = await _rotate(store, "fam-1", "j0", "j2", NOW + 1, grace_s=5)
    assert retry.outcome is RotateOutcome.REVOKED


async def test_rotate_retired_jti_is_reuse_and_revokes_family(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    await _rotate(store, "fam-1", "j0", "j1", NOW)
    result = await _rotate(store, "fam-1", "j0", "j2", NOW + 1)
    assert result.outcome is RotateOutcome.REUSED
    assert result.family is not None and result.family.revoked
    assert await store.get_family("fam-1") == result.family
    assert await store.revocations(NOW + 1) == [Revocation("family", ISS, "fam-1", NOW + 3600)]
    # The thief's successor is dead too: the whole family is.
    assert (await _rotate(store, "fam-1", "j1", "j3", NOW + 2)).outcome is RotateOutcome.REVOKED


async def test_rotate_on_revoked_family_is_refused(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    await store.revoke(Revocation("family", ISS, "fam-1", NOW + 3600), deadline_ms=_later())
    result = await _rotate(store, "fam-1", "j0", "j1", NOW)
    assert result.outcome is RotateOutcome.REVOKED
    assert result.family is not None and result.family.current_jti == "j0"


async def test_rotate_unknown_family_is_unknown(store: TokenStore) -> None:
    result = await _rotate(store, "nope", "j0", "j1", NOW)
    assert (result.outcome, result.family) == (RotateOutcome.UNKNOWN, None)


async def test_rotate_at_or_after_expiry_is_refused(store: TokenStore) -> None:
    await store.create_family(_family(expires_at=NOW + 10), deadline_ms=_later())
    assert (await _rotate(store, "fam-1", "j0", "j1", NOW + 10)).outcome is RotateOutcome.REVOKED
    assert (await _rotate(store, "fam-1", "j0", "j1", NOW + 99)).outcome is RotateOutcome.REVOKED
    family = await store.get_family("fam-1")
    assert family is not None and (family.current_jti, family.revoked) == ("j0", False)
    assert (await _rotate(store, "fam-1", "j0", "j1", NOW + 9)).outcome is RotateOutcome.ROTATED


async def test_revoke_jti_is_idempotent_and_keeps_the_later_expiry(store: TokenStore) -> None:
    for expires_at in (NOW + 60, NOW + 60, NOW + 120, NOW + 30):
        await store.revoke(Revocation("jti", ISS, "a1", expires_at), deadline_ms=_later())
    assert await store.revocations(NOW) == [Revocation("jti", ISS, "a1", NOW + 120)]


async def test_revocations_are_keyed_by_kind_issuer_and_key(store: TokenStore) -> None:
    wanted = {
        Revocation("jti", ISS, "x", NOW + 60),
        Revocation("jti", "https://other.test", "x", NOW + 60),
        Revocation("family", ISS, "x", NOW + 60),
    }
    for revocation in wanted:
        await store.revoke(revocation, deadline_ms=_later())
    assert set(await store.revocations(NOW)) == wanted


async def test_revoke_family_marks_the_family_revoked(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    await store.revoke(Revocation("family", ISS, "fam-1", NOW + 3600), deadline_ms=_later())
    await store.revoke(Revocation("family", ISS, "no-such-family", NOW + 60), deadline_ms=_later())
    family = await store.get_family("fam-1")
    assert family is not None and family.revoked
    assert len(await store.revocations(NOW)) == 2


async def test_revocations_drop_expired_entries_and_ended_families(store: TokenStore) -> None:
    await store.create_family(_family("ends-soon", expires_at=NOW + 10), deadline_ms=_later())
    await store.create_family(_family("lives-on", expires_at=NOW + 1000), deadline_ms=_later())
    for i in range(20):
        await store.revoke(Revocation("jti", ISS, f"old-{i}", NOW + 10), deadline_ms=_later())
    await store.revoke(Revocation("jti", ISS, "live", NOW + 1000), deadline_ms=_later())
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
    await store.create_family(_family(), deadline_ms=_later())
    results = await asyncio.gather(
        *(_rotate(store, "fam-1", "j0", f"next-{i}", NOW, grace_s=5) for i in range(50))
    )
    counts = collections.Counter(r.outcome for r in results)
    assert counts == {RotateOutcome.ROTATED: 1, RotateOutcome.GRACE: 49}, counts
    successors = {r.family.current_jti for r in results if r.family is not None}
    assert len(successors) == 1 and successors != {"j0"}
    # After the window the same token is reuse, and the family dies.
    late = await _rotate(store, "fam-1", "j0", "late", NOW + 5, grace_s=5)
    assert late.outcome is RotateOutcome.REUSED
    family = await store.get_family("fam-1")
    assert family is not None and family.revoked


async def test_concurrent_rotates_of_one_token_rotate_exactly_once(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    results = await asyncio.gather(
        *(_rotate(store, "fam-1", "j0", f"next-{i}", NOW) for i in range(50))
    )
    _assert_one_winner([r.outcome for r in results])
    family = await store.get_family("fam-1")
    winner = next(r for r in results if r.outcome is RotateOutcome.ROTATED)
    assert family is not None and family.revoked
    assert winner.family is not None and family.current_jti == winner.family.current_jti


# --- the refresh transaction (issue 12) -------------------------------------------------------


async def test_reuse_records_the_revocation_at_its_full_horizon(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    await _rotate(store, "fam-1", "j0", "j1", NOW)
    result = await _rotate(store, "fam-1", "j0", "j2", NOW + 1, revoke_extra_s=3630)
    wide = Revocation("family", ISS, "fam-1", NOW + 3600 + 3630)
    assert (result.outcome, result.revocation) == (RotateOutcome.REUSED, wide)
    # One write, not two: the store never held the family's end alone (which would let the
    # access tokens minted at its last refresh outlive the family's death).
    assert await store.revocations(NOW + 3600) == [wide]


@pytest.mark.parametrize("who", ["subject", "issuer"])
async def test_a_token_that_is_not_the_familys_changes_nothing(store: TokenStore, who: str) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    await _rotate(store, "fam-1", "j0", "j1", NOW)
    before = await store.get_family("fam-1")
    other = {who: "someone-else"}
    for presented in ("j1", "j0"):  # the current token, and a retired one (no reuse either)
        result = await _rotate(store, "fam-1", presented, "j9", NOW + 1, **other)  # type: ignore[arg-type]
        assert result.outcome is RotateOutcome.MISMATCH
    assert await store.get_family("fam-1") == before
    assert await store.revocations(NOW + 1) == []
    assert (await _rotate(store, "fam-1", "j1", "j2", NOW + 1)).outcome is RotateOutcome.ROTATED


async def test_a_widened_scope_is_refused_before_the_token_is_consumed(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())  # scope "read write"
    widened = await _rotate(store, "fam-1", "j0", "j1", NOW, scope="read admin")
    assert widened.outcome is RotateOutcome.SCOPE_WIDENED
    assert await store.get_family("fam-1") == _family()  # j0 is still current
    narrowed = await _rotate(store, "fam-1", "j0", "j1", NOW, grace_s=5, scope="read")
    assert narrowed.outcome is RotateOutcome.ROTATED
    in_grace = await _rotate(store, "fam-1", "j0", "j9", NOW + 1, grace_s=5, scope="admin")
    assert in_grace.outcome is RotateOutcome.SCOPE_WIDENED
    # A retired token after the window is reuse whatever scope it asks for.
    late = await _rotate(store, "fam-1", "j0", "j9", NOW + 9, grace_s=5, scope="admin")
    assert late.outcome is RotateOutcome.REUSED


async def test_a_rotation_retried_with_its_own_successor_is_rotated_again(
    store: TokenStore,
) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    first = await _rotate(store, "fam-1", "j0", "j1", NOW)
    retried = await _rotate(store, "fam-1", "j0", "j1", NOW + 1)  # the driver's retry
    assert (retried.outcome, retried.family) == (RotateOutcome.ROTATED, first.family)
    assert await store.get_family("fam-1") == first.family
    # Anyone else presenting j0 (another successor) is reuse, as before.
    assert (await _rotate(store, "fam-1", "j0", "j2", NOW + 1)).outcome is RotateOutcome.REUSED


# --- deadlines and identity (issue 13) ---------------------------------------------------------

_LATE_WRITES: dict[str, Callable[[TokenStore, int], Awaitable[object]]] = {
    "create_family": lambda s, d: s.create_family(_family("fam-2"), deadline_ms=d),
    "rotate": lambda s, d: _rotate(s, "fam-1", "j0", "j1", NOW, deadline_ms=d),
    "reuse": lambda s, d: _rotate(s, "fam-1", "retired", "j1", NOW, deadline_ms=d),
    "revoke": lambda s, d: s.revoke(Revocation("family", ISS, "fam-1", NOW + 9), deadline_ms=d),
    "restore": lambda s, d: s.restore(
        [Revocation("jti", ISS, "a", NOW + 9), Revocation("family", ISS, "fam-1", NOW + 9)],
        deadline_ms=d,
    ),
}


@pytest.mark.parametrize("write", list(_LATE_WRITES))
async def test_a_write_past_its_deadline_changes_nothing(store: TokenStore, write: str) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    with pytest.raises(StoreDeadlineError):
        await _LATE_WRITES[write](store, _later(-0.5))
    assert await store.get_family("fam-1") == _family()
    assert await store.get_family("fam-2") is None
    assert await store.revocations(NOW) == []
    # The same write on time is applied: the refusal was the deadline, nothing else.
    await _LATE_WRITES[write](store, _later())


async def test_the_epoch_is_set_once(store: TokenStore) -> None:
    first = await store.epoch("epoch-a", deadline_ms=_later())
    assert first == "epoch-a"
    assert await store.epoch("epoch-b", deadline_ms=_later()) == "epoch-a"
    assert await store.epoch("epoch-c", deadline_ms=_later(-1)) == "epoch-a"  # a read: no write


async def test_restore_writes_back_many_and_keeps_the_later_expiry(store: TokenStore) -> None:
    await store.create_family(_family(), deadline_ms=_later())
    await store.revoke(Revocation("jti", ISS, "kept", NOW + 500), deadline_ms=_later())
    back = [Revocation("jti", ISS, f"t{i}", NOW + 100 + i) for i in range(1200)]
    back += [Revocation("jti", ISS, "kept", NOW + 50), Revocation("family", ISS, "fam-1", NOW + 60)]
    await store.restore(back, deadline_ms=_later())
    await store.restore(back, deadline_ms=_later())  # a second sidecar doing the same
    found = {(r.key, r.expires_at) for r in await store.revocations(NOW)}
    assert found == {(r.key, r.expires_at) for r in back[:1200]} | {
        ("kept", NOW + 500),
        ("fam-1", NOW + 60),
    }
    family = await store.get_family("fam-1")
    assert family is not None and family.revoked


async def _since_all(
    store: TokenStore, cursor: str, now: int, limit: int
) -> tuple[list[RevocationRow], str]:
    """Every write after `cursor`, page by page, and the cursor after them."""
    rows: list[RevocationRow] = []
    while True:
        page = await store.revocations_since(cursor, now, limit)
        assert page is not None
        rows += page[0]
        if page[1] == cursor and not page[0]:
            return rows, cursor
        cursor = page[1]


async def test_revocations_since_reads_only_the_writes_after_the_cursor(store: TokenStore) -> None:
    """Issue 16: a reconciliation reads what changed, not the whole set."""
    await store.revoke(Revocation("jti", ISS, "before", NOW + 60), deadline_ms=_later())
    cursor = await store.revocation_cursor()
    after = [Revocation("jti", ISS, f"after-{i}", NOW + 60 + i) for i in range(7)]
    for revocation in after:
        await store.revoke(revocation, deadline_ms=_later())
    await store.revoke(Revocation("jti", ISS, "dead", NOW), deadline_ms=_later())
    rows, end = await _since_all(store, cursor, NOW, 3)
    # Each write once, expired writes left out, nothing from before the cursor. No order
    # across keys: a partitioned store (Redis, issue 16) has none, and readers keep the
    # longest horizon whatever the order (test_a_write_that_changes_nothing_takes_no_position
    # pins the order of one key's writes).
    assert sorted(rows) == sorted((r.kind, r.issuer, r.key, r.expires_at) for r in after)
    assert await store.revocations_since(end, NOW, 3) == ([], end)


async def test_a_write_that_changes_nothing_takes_no_position(store: TokenStore) -> None:
    """A repeat with the same or a shorter horizon (a write-back of what the store has) is
    not a change: other sidecars do not read it again, and restore does not count it."""
    a = Revocation("jti", ISS, "a", NOW + 60)
    assert await store.restore([a], deadline_ms=_later()) == 1
    cursor = await store.revocation_cursor()
    assert (
        await store.restore([a, Revocation("jti", ISS, "a", NOW + 30)], deadline_ms=_later()) == 0
    )
    await store.revoke(a, deadline_ms=_later())
    assert await store.revocations_since(cursor, NOW, 10) == ([], cursor)
    longer = Revocation("jti", ISS, "a", NOW + 90)
    assert await store.restore([longer, a], deadline_ms=_later()) == 1
    rows, _ = await _since_all(store, cursor, NOW, 10)
    assert rows == [("jti", ISS, "a", NOW + 90)]


async def test_scan_revocations_pages_through_every_live_entry(store: TokenStore) -> None:
    live = {Revocation("jti", ISS, f"k{i}", NOW + 100 + i) for i in range(300)}
    dead = [Revocation("jti", ISS, f"d{i}", NOW - 5) for i in range(5)]
    await store.restore([*live, *dead], deadline_ms=_later())
    token, seen = "", set[Revocation]()
    for _ in range(1_000):
        rows, token = await store.scan_revocations(token, NOW, 16)
        seen.update(Revocation(*row) for row in rows)
        if not token:
            break
    assert seen == live


async def test_revocations_written_during_a_scan_are_read_after_its_cursor(
    store: TokenStore,
) -> None:
    """The cursor taken before a full scan, then the changes since it: nothing is missed."""
    await store.restore(
        [Revocation("jti", ISS, f"k{i}", NOW + 60) for i in range(50)], deadline_ms=_later()
    )
    cursor = await store.revocation_cursor()
    rows, token = await store.scan_revocations("", NOW, 10)
    late = Revocation("jti", ISS, "late", NOW + 60)
    await store.revoke(late, deadline_ms=_later())
    while token:
        page, token = await store.scan_revocations(token, NOW, 10)
        rows += page
    since, _ = await _since_all(store, cursor, NOW, 10)
    assert ("jti", ISS, "late", NOW + 60) in set(rows) | set(since)
    assert {r[2] for r in rows} | {r[2] for r in since} == {f"k{i}" for i in range(50)} | {"late"}


async def test_purge_drops_expired_revocations_and_ended_families(store: TokenStore) -> None:
    await store.create_family(_family("ends", expires_at=NOW + 10), deadline_ms=_later())
    await store.restore(
        [Revocation("jti", ISS, "old", NOW + 10), Revocation("jti", ISS, "new", NOW + 11)],
        deadline_ms=_later(),
    )
    await store.purge(NOW + 10)
    assert await store.get_family("ends") is None
    assert await store.revocations(0) == [Revocation("jti", ISS, "new", NOW + 11)]


async def test_count_revocations_is_exact_or_not_offered(store: TokenStore) -> None:
    await store.restore(
        [Revocation("jti", ISS, f"k{i}", NOW + 60 * i) for i in range(1, 11)], deadline_ms=_later()
    )
    found = await store.count_revocations(NOW + 300)
    assert found is None or found == 6


async def test_persistence_is_reported_in_a_known_word(store: TokenStore) -> None:
    known = {"aof-always", "aof-everysec", "aof-no", "rdb", "none", "fsync", "process", "unknown"}
    assert await store.persistence() in known


_OPERATIONS: dict[str, Callable[[TokenStore], Awaitable[object]]] = {
    "ping": lambda s: s.ping(),
    "create_family": lambda s: s.create_family(_family("fam-2"), deadline_ms=_later()),
    "get_family": lambda s: s.get_family("fam-1"),
    "rotate": lambda s: _rotate(s, "fam-1", "j0", "j1", NOW),
    "open_revocation_feed": lambda s: s.open_revocation_feed(),
    "revoke": lambda s: s.revoke(Revocation("jti", ISS, "a", NOW + 1), deadline_ms=_later()),
    "restore": lambda s: s.restore([Revocation("jti", ISS, "a", NOW + 1)], deadline_ms=_later()),
    "epoch": lambda s: s.epoch("e", deadline_ms=_later()),
    "persistence": lambda s: s.persistence(),
    "revocations": lambda s: s.revocations(NOW),
}


@pytest.mark.parametrize("operation", list(_OPERATIONS))
async def test_closed_store_is_unavailable(store: TokenStore, operation: str) -> None:
    await store.create_family(_family(), deadline_ms=_later())
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
import asyncio, sys, time
from sidecar.store.base import Rotation
from sidecar.store.sqlite import SqliteTokenStore

async def main() -> None:
    path, family_id, presented, next_jti, now = sys.argv[1:]
    store = SqliteTokenStore(path)
    await store.open()
    print("ready", flush=True)
    sys.stdin.readline()
    result = await store.rotate(Rotation(
        family_id, presented, next_jti, int(now), int(time.time() * 1000) + 60_000,
        subject="spiffe://example.org/ns/a/sa/b", issuer="https://issuer.test",
    ))
    print(result.outcome.name, flush=True)
    await store.close()

asyncio.run(main())
"""

# Rotates j{i} -> j{i+1} forever, printing "try N" before and "done N" after each commit.
_ROTATE_FOREVER_CHILD = """
import asyncio, sys, time
from sidecar.store.base import Rotation
from sidecar.store.sqlite import SqliteTokenStore

async def main() -> None:
    path, family_id, start, now = sys.argv[1:]
    store = SqliteTokenStore(path)
    await store.open()
    i = int(start)
    while True:
        print(f"try {i + 1}", flush=True)
        result = await store.rotate(Rotation(
            family_id, f"j{i}", f"j{i + 1}", int(now), int(time.time() * 1000) + 60_000,
            subject="spiffe://example.org/ns/a/sa/b", issuer="https://issuer.test",
        ))
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
    await store.create_family(_family(), deadline_ms=_later())
    await store.close()
    return path


async def test_sqlite_two_connections_rotate_exactly_once(db_path: Path) -> None:
    first, second = await _sqlite(db_path), await _sqlite(db_path)
    try:
        results = await asyncio.gather(
            *(_rotate((first, second)[i % 2], "fam-1", "j0", f"n{i}", NOW) for i in range(50))
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
            await _rotate(store, "fam-1", "j0", "j1", NOW)
        assert ticks >= 10  # the loop kept running while the worker waited ~300 ms
        locker.execute("ROLLBACK")
        assert (await _rotate(store, "fam-1", "j0", "j1", NOW)).outcome is RotateOutcome.ROTATED
    finally:
        ticker.cancel()
        locker.close()
        await store.close()


async def test_sqlite_creates_private_files_and_versioned_schema(tmp_path: Path) -> None:
    path = tmp_path / "new" / "state" / "tokens.db"
    store = await _sqlite(path)
    await store.create_family(_family(), deadline_ms=_later())
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


async def test_sqlite_v3_file_is_numbered_once_and_read_incrementally_after(
    tmp_path: Path,
) -> None:
    """Issue 16: a file from before positions existed gets one distinct position per row,
    and writes after the upgrade come after all of them."""
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    for script in (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3):
        for statement in script.split(";"):
            if statement.strip():
                raw.execute(statement)
    raw.executemany(
        "INSERT INTO revocations (kind, issuer, key, expires_at) VALUES ('jti', ?, ?, ?)",
        [(ISS, f"old-{i}", NOW + 60) for i in range(5)],
    )
    raw.execute("PRAGMA user_version = 3")
    raw.commit()
    raw.close()
    store = await _sqlite(path)
    try:
        rows, cursor = await _since_all(store, "0", NOW, 2)
        assert sorted(r[2] for r in rows) == [f"old-{i}" for i in range(5)]
        assert cursor == await store.revocation_cursor() == "5"
        await store.revoke(Revocation("jti", ISS, "new", NOW + 60), deadline_ms=_later())
        assert await store.revocations_since(cursor, NOW, 10) == (
            [("jti", ISS, "new", NOW + 60)],
            "6",
        )
    finally:
        await store.close()


async def test_sqlite_a_sequence_behind_the_cursor_means_a_full_read(db_path: Path) -> None:
    """A file restored from an older backup keeps its epoch; its sequence goes back."""
    store = await _sqlite(db_path)
    try:
        await store.revoke(Revocation("jti", ISS, "a", NOW + 60), deadline_ms=_later())
        assert await store.revocations_since("2", NOW, 10) is None
        assert await store.revocations_since("1", NOW, 10) == ([], "1")
    finally:
        await store.close()


async def test_sqlite_unusable_path_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreUnavailableError):
        await _sqlite(tmp_path / "a-file" / "tokens.db")  # parent is not a directory
    unopened = SqliteTokenStore(tmp_path / "tokens.db")
    with pytest.raises(StoreUnavailableError):
        await unopened.ping()


async def test_sqlite_write_that_got_the_lock_after_its_deadline_rolls_back(db_path: Path) -> None:
    """The SQLite analogue of a late Redis script: the write waited for another process's
    lock longer than its caller would, so it must not commit when it finally gets it."""
    store = SqliteTokenStore(db_path, busy_timeout_ms=10_000)
    await store.open()
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        pending = asyncio.create_task(
            _rotate(store, "fam-1", "j0", "j1", NOW, deadline_ms=_later(0.2))
        )
        await asyncio.sleep(0.6)  # well past the deadline, well within busy_timeout
        assert not pending.done()  # still waiting for the lock
        locker.execute("ROLLBACK")
        with pytest.raises(StoreDeadlineError):
            await pending
        assert await store.get_family("fam-1") == _family()
        assert (await _rotate(store, "fam-1", "j0", "j1", NOW)).outcome is RotateOutcome.ROTATED
    finally:
        locker.close()
        await store.close()


# Presents the retired j0 of `_family()` after j0 -> j1 (reuse) with a statement hook that
# SIGKILLs the process just before the Nth SQL statement of that transaction runs.
_CRASH_MID_REUSE_CHILD = """
import asyncio, os, signal, sys, time
from sidecar.store.base import Rotation
from sidecar.store.sqlite import SqliteTokenStore

async def main() -> None:
    path, crash_at, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = SqliteTokenStore(path)
    await store.open()
    seen = []

    def trace(statement: str) -> None:
        seen.append(statement)
        print("sql", statement.split()[0], flush=True)
        if len(seen) == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)

    # Test-only reach into the worker's connection (on its thread): sqlite3 has no other
    # statement hook.
    await store._run(lambda: store._conn.set_trace_callback(trace))
    result = await store.rotate(Rotation(
        "fam-1", "j0", "j2", 1_700_000_001, int(time.time() * 1000) + 60_000,
        subject="spiffe://example.org/ns/a/sa/b", issuer="https://issuer.test",
        revoke_extra_s=extra,
    ))
    print("outcome", result.outcome.name, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # after the commit, before anyone hears of it

asyncio.run(main())
"""


async def test_sqlite_crash_between_any_two_steps_of_a_reuse_never_splits_it(
    tmp_path: Path,
) -> None:
    """Kill the process before each statement of the reuse transaction in turn, and once
    after it: the file shows no reuse at all, or the reuse with its full-horizon revocation;
    never a revoked family without it, or with the family's own end only."""
    extra = 3630
    wide = Revocation("family", ISS, "fam-1", NOW + 3600 + extra)
    crash_at = 1
    while True:
        path = tmp_path / f"crash-{crash_at}.db"
        store = await _sqlite(path)
        await store.create_family(_family(), deadline_ms=_later())
        await _rotate(store, "fam-1", "j0", "j1", NOW)
        await store.close()
        child = await _spawn(_CRASH_MID_REUSE_CHILD, path, crash_at, extra)
        out, _ = await child.communicate()
        assert await child.wait() == -9
        statements = [
            line.split()[1] for line in out.decode().splitlines() if line.startswith("sql")
        ]
        committed = b"outcome REUSED" in out
        store = await _sqlite(path)
        family = await store.get_family("fam-1")
        revocations = await store.revocations(NOW + 1)
        assert family is not None
        if committed:
            assert family.revoked and revocations == [wide]
        else:
            assert not family.revoked and revocations == [], statements
            # The retired token is still detected, and now the reuse is whole.
            again = await _rotate(store, "fam-1", "j0", "j3", NOW + 1, revoke_extra_s=extra)
            assert again.outcome is RotateOutcome.REUSED
            assert await store.revocations(NOW + 3601) == [wide]
        await store.close()
        if committed:
            break
        crash_at += 1
    # BEGIN, SELECT, UPDATE, INSERT, COMMIT: a crash was tried before each, then after COMMIT.
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT" and crash_at > 4, statements


async def test_memory_reuse_cannot_be_cut_by_cancellation() -> None:
    """What a crash is to the other stores, cancellation is to the memory store (a crash
    loses it whole): cancelled at any await, a reuse is wholly done or not done at all."""
    for steps in range(6):
        store = MemoryTokenStore()
        await store.create_family(_family(), deadline_ms=_later())
        await _rotate(store, "fam-1", "j0", "j1", NOW)
        reuse = asyncio.ensure_future(_rotate(store, "fam-1", "j0", "j2", NOW, revoke_extra_s=9))
        for _ in range(steps):
            await asyncio.sleep(0)
        reuse.cancel()
        await asyncio.gather(reuse, return_exceptions=True)
        family = await store.get_family("fam-1")
        revocations = await store.revocations(NOW)
        assert family is not None
        assert (family.revoked, revocations) in (
            (False, []),
            (True, [Revocation("family", ISS, "fam-1", NOW + 3609)]),
        ), steps
