"""Issue 16: a large revocation set loads in pages without blocking the event loop, and later
reconciliations read only what changed.

200,000 live revocations are written straight into a real store (SQLite file, private Redis)
in bulk; a real StoreSync then loads them into a real mirror while a ticker task runs on the
same loop. Every page merged into the mirror is bounded, and the ticker must have run between
every two pages: a load built in one synchronous step fails both. Progress is asserted, never
a duration.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
import redis

from sidecar.clock import SystemClock
from sidecar.config import StoreSettings
from sidecar.store.base import Revocation, RevocationGroup, TokenStore, deadline_for
from sidecar.store.redis import RedisTokenStore
from sidecar.store.redis_connect import RedisConnector
from sidecar.store.redis_keys import KeyLayout, encode_member
from sidecar.store.sqlite import SqliteTokenStore
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.store_sync import PAGE_ROWS, StoreSync
from tests.support.redis import RedisServer

COUNT = 200_000
ISS = "https://issuer.test"
PREFIX = "scale"


def _key(i: int) -> str:
    return f"jti-{i:08d}"


async def _sqlite_with(path: Path, until: int) -> SqliteTokenStore:
    store = SqliteTokenStore(path)
    await store.open()  # the schema; then a bulk insert as a long-running fleet would leave
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO revocations (kind, issuer, key, expires_at, seq) VALUES (?, ?, ?, ?, ?)",
            (("jti", ISS, _key(i), until, i + 1) for i in range(COUNT)),
        )
        db.execute("UPDATE sequence SET value = ? WHERE name = 'revocations'", (COUNT,))
    db.close()
    return store


def _redis_with(url: str, until: int) -> RedisTokenStore:
    client = redis.Redis.from_url(url, socket_timeout=30)
    keys = KeyLayout(PREFIX)
    for start in range(0, COUNT, 20_000):
        by_partition: dict[str, dict[str, int]] = {}
        for i in range(start, start + 20_000):
            revoked = keys.partition_of(_key(i)).revoked
            by_partition.setdefault(revoked, {})[encode_member("jti", ISS, _key(i))] = until
        for revoked, members in by_partition.items():
            client.zadd(revoked, members)
    client.close()
    settings = StoreSettings.model_validate(
        {"backend": "redis", "redis_url": url, "redis_key_prefix": PREFIX, "redis_timeout_s": 5}
    )
    return RedisTokenStore(
        RedisConnector(settings.redis_options()), clock=SystemClock(), key_prefix=PREFIX
    )


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def big_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TokenStore]:
    until = int(time.time()) + 3600
    if request.param == "sqlite":
        store: TokenStore = await _sqlite_with(tmp_path / "tokens.db", until)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        store = _redis_with(server.url, until)
    yield store
    await store.close()


async def test_loading_a_large_set_never_blocks_the_event_loop(big_store: TokenStore) -> None:
    mirror = RevocationMirror()
    sync = StoreSync(big_store, mirror, SystemClock())
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    pages: list[tuple[int, int]] = []  # (ticks so far, rows) at each page taken in
    append = mirror.append_groups  # the first load's path (no lookup per row)

    def append_page(groups: Iterable[RevocationGroup]) -> None:
        groups = list(groups)
        pages.append((ticks, sum(len(keys) for _, _, keys, _ in groups)))
        append(groups)

    mirror.append_groups = append_page  # type: ignore[method-assign]
    ticking = asyncio.create_task(ticker())
    try:
        await sync.reconcile()
    finally:
        done.set()
        await ticking
    assert len(mirror) == COUNT
    assert mirror.is_revoked(ISS, _key(0), "") and mirror.is_revoked(ISS, _key(COUNT - 1), "")
    assert not mirror.is_revoked(ISS, _key(COUNT), "")
    # Bounded pages (ZSCAN's COUNT is a hint: a few more may come), and the loop turned
    # between every two of them.
    assert len(pages) >= COUNT // (2 * PAGE_ROWS)
    assert max(rows for _, rows in pages) <= 2 * PAGE_ROWS
    assert all(b > a for (a, _), (b, _) in zip(pages, pages[1:], strict=False))


async def test_after_the_first_load_a_reconciliation_reads_only_what_changed(
    big_store: TokenStore,
) -> None:
    mirror = RevocationMirror()
    sync = StoreSync(big_store, mirror, SystemClock())
    await sync.reconcile()
    written = Revocation("jti", ISS, "written-later", int(time.time()) + 600)
    await big_store.revoke(written, deadline_ms=deadline_for(time.time(), 5))
    await sync.reconcile()
    await sync.reconcile()
    assert sync.full_reads == 1  # one full read, at the start; then changes only
    assert mirror.is_revoked(ISS, "written-later", "") and len(mirror) == COUNT + 1
    assert (sync.restored, sync.epoch_changes) == (0, 0)


@pytest.mark.redis
async def test_a_first_load_on_redis_has_the_next_page_asked_for_before_taking_one(
    redis_server: RedisServer,
) -> None:
    """Redis spends about as long on a ZSCAN page as this process on taking one in (issue 16),
    so the next page's request is out, and run by Redis, before a page is taken. Redis's own
    ZSCAN count tells: when page k is taken it must have run more than the first k calls'."""
    store = _redis_with(redis_server.url, int(time.time()) + 3600)
    mirror = RevocationMirror()
    sync = StoreSync(store, mirror, SystemClock())
    probe = redis.Redis.from_url(redis_server.url, socket_timeout=5)

    def zscans_run() -> int:
        return int(probe.info("commandstats").get("cmdstat_zscan", {}).get("calls", 0))

    returned: list[int] = []  # ZSCANs run when scan call k returned (none in flight then)
    last: list[bool] = []  # whether scan call k returned the last page
    taken: list[int] = []  # ZSCANs run when page k was taken
    scan, append = store.scan_revocation_groups, mirror.append_groups

    async def scan_counted(token: str, now: int, limit: int) -> tuple[list[RevocationGroup], str]:
        page = await scan(token, now, limit)
        returned.append(zscans_run())
        last.append(not page[1])
        return page

    def append_counted(groups: Iterable[RevocationGroup]) -> None:
        # A request already written reaches Redis and runs while this thread waits; one
        # that was not written never does (the loop is blocked here), so the wait ends at
        # its deadline and the assertion below fails. No wait after the last page.
        k = len(taken)
        deadline = time.monotonic() + 5
        while not last[k] and zscans_run() <= returned[k] and time.monotonic() < deadline:
            time.sleep(0.002)
        taken.append(zscans_run())
        append(groups)

    store.scan_revocation_groups = scan_counted  # type: ignore[method-assign]
    mirror.append_groups = append_counted  # type: ignore[method-assign]
    try:
        await sync.reconcile()
    finally:
        probe.close()
        await store.close()
    assert len(mirror) == COUNT and len(taken) == len(returned) > 10
    assert all(now > then for now, then in zip(taken[:-1], returned[:-1], strict=True))
