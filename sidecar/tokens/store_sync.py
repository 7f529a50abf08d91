"""Keeping the revocation mirror and the store in step, and noticing a store that lost data.

Every reconciliation (start-up, each poll, each reconnection of the feed) does, in order:

1. ask the store its identity (`TokenStore.epoch`, set once if absent): an answer different
   from the last one means the data set was replaced: Redis restarted without persistence,
   a failover to a replica that never had the data, a new SQLite file;
2. read what changed: at start, after an epoch change, or when the store cannot say what
   changed since our cursor (`revocations_since` answers None: a Redis feed trimmed past us,
   or a store that went back in time, e.g. a failover to a replica that missed the last
   writes), a full read in pages (`revocation_cursor`, `scan_revocations`); otherwise only the
   writes after our cursor (issue 16: O(changes) per poll on the store, not O(all)), then
   checks the store holds at least as many entries as the mirror (`count_revocations`,
   O(log n) on Redis, where a promoted replica may lack the last writes yet keep the epoch
   and the cursor; Redis also checks each partition against its own earlier count inside
   `revocations_since`, store/redis_revocations.py); fewer means a loss and a full read with
   write-back follows. Every page is merged into the mirror and the event loop gets a turn
   between pages, so a million entries never block it;
3. after a full read that followed a loss (or any full read while the mirror already held
   entries), write back (`TokenStore.restore`) everything the mirror holds, one bucket-sized
   chunk at a time: the store writes only what it lacks (absent, or with a shorter horizon)
   and says how many, so a store that lost nothing costs reads, not writes. Any sidecar may
   do it, several may do it at once (a revocation written twice is one revocation), and a
   sidecar started after the loss loads what the others wrote back;
4. purge expired entries from the mirror (only buckets holding one are touched, a slice of
   them per loop turn) and from the store.

The first load at start may come from a local snapshot of the mirror instead of a full read
(`use_snapshot`, tokens/revocation_snapshot.py): used only when it names the store's current
epoch, followed by the ordinary incremental read from the snapshot's cursor and the intact
check; when either fails the snapshot is dropped and the full read runs as if there were none
(nothing is written back from a snapshot). A new pod with no usable local file tries, on Redis,
the copy one sidecar per interval keeps in the store (tokens/revocation_snapshot_store.py) the
same way, with the same checks; `loaded_from` says which source the first load used. The first
full read into an empty mirror stages its pages without looking each entry up
(`RevocationMirror.append_groups`): lookups are exact at once, so the sidecar serves as soon as
the pages and the changes since the cursor are in. Sorting the stages into buckets, merging the
few duplicates a scan may return and counting horizons (`RevocationMirror.settle`,
tokens/revocation_staging.py) follow in a task of their own, one stage per loop turn (issue 16,
stop 20: a third of a first load's CPU moved after serving); the loss check (`_intact`) and the
snapshot wait for it to finish, so they see every entry once and counted (a restart from a
snapshot, which holds no copies, has its staged entries counted where they are: its check waits
for nothing). The snapshot is written (off the event loop) at the first poll after a full load,
then at most every 5 minutes when the cursor moved, and at stop (`save_snapshot`).

Entries leave the mirror only by their own horizon, never because the store lacks them.
Clock skew between sidecars can make one write back an entry another's purge just dropped
(its clock says the entry is still in force); the write is harmless and stops once the slower
clock passes the entry's horizon.

A loss is reported once per reconciliation that finds one: one warning line, and the counters
`restored` and `epoch_changes` (exported as `authsidecar_store_revocations_restored_total` and
`authsidecar_store_epoch_changes_total`). What cannot be restored: refresh families. Only the
store holds them, so after a loss their refresh tokens are refused (UNKNOWN -> TOKEN_REVOKED),
which fails closed; the users sign in again. Revocations written after the last running
sidecar saw them and lost before any sidecar loaded them are gone too: only Redis persistence
(AOF) closes that (docs/operations.md).

Persistence: `check_persistence` reads how the store keeps data (tokens/store_persistence.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sidecar.clock import Clock
from sidecar.errors import StoreUnavailableError
from sidecar.store.base import Revocation, SnapshotStore, TokenStore, deadline_for
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.revocation_snapshot import SnapshotKeeper
from sidecar.tokens.revocation_snapshot_store import StoreSnapshotKeeper
from sidecar.tokens.store_persistence import check_persistence

log = logging.getLogger(__name__)
# Rows per store read and per write-back batch: one page is merged in one synchronous step
# (a few milliseconds), so the event loop is never held longer than that.
PAGE_ROWS = 2_000
# How far another sidecar's clock may run ahead of ours (its purge drops entries our clock
# still holds): entries expiring sooner are not counted when checking the store is intact.
SKEW_MARGIN_S = 60
# Stages settled per loop turn after a first load (~1,000 entries at a million: ~0.5 ms).
_SETTLE_STEP = 1
# Loop turns a store call needs to send its request (redis-py 8.1 on Python 3.11: 2, its
# write runs in a task of its own under `asyncio.wait_for`). A full read gives the next page
# these before taking the current one, so the store computes it meanwhile (issue 16: at a
# first start Redis spends about as long on a page as this process does).
_SEND_TURNS = 3


class StoreSync:
    """Reconciles one mirror with one store; see the module docstring."""

    def __init__(self, store: TokenStore, mirror: RevocationMirror, clock: Clock) -> None:
        self._store = store
        self._mirror = mirror
        self._clock = clock
        self.epoch: str | None = None
        self.epoch_changes = 0
        self.restored = 0
        self.persistence = ""
        # Where the next incremental read starts; None until a full read completed.
        self._cursor: str | None = None
        self.full_reads = 0
        self._write_back_owed = False
        # The poll and the feed's reconnection may both reconcile: one at a time, so a loss
        # is written back and reported once, not once per path.
        self._lock = asyncio.Lock()
        # The local snapshot (`use_snapshot`); None: none is kept (a memory store).
        self.snapshot: SnapshotKeeper | None = None
        # The copy the store keeps for new pods (`use_snapshot`); None: the store keeps none.
        self.shared: StoreSnapshotKeeper | None = None
        # Where the first load came from: "store" (a full read), "snapshot" (the local
        # file) or "store snapshot" (the store's copy); "" before it.
        self.loaded_from = ""
        self._reconciles = 0
        # Settling the first load's stages, after it (`settled`); None before a first load.
        self._settling: asyncio.Future[None] | None = None

    def use_snapshot(self, path: Path, store_kind: str, *, shared: bool = True) -> None:
        """Keep the mirror's snapshot at `path` for a store of kind `store_kind` (recorded
        in the file: a snapshot of another kind of store is never used); with `shared`, and
        a store that keeps one (`SnapshotStore`: Redis), offer it to the store too and load
        the store's copy when the local file is missing or unusable
        (tokens/revocation_snapshot_store.py)."""
        self.snapshot = SnapshotKeeper(path, store_kind)
        if shared and isinstance(self._store, SnapshotStore):
            self.shared = StoreSnapshotKeeper(self._store, store_kind)

    async def reconcile(self) -> None:
        """One reconciliation; raises StoreUnavailableError (the next one tries again)."""
        async with self._lock:
            await self._reconcile()
            self._reconciles += 1
        if self.snapshot is not None and self.snapshot.due(self._cursor, self._reconciles > 1):
            await self.save_snapshot()

    async def _reconcile(self) -> None:
        now_s = self._clock.now()
        now = int(now_s)
        deadline = deadline_for(now_s, self._store.timeout_s)
        epoch = await self._store.epoch(secrets.token_hex(16), deadline_ms=deadline)
        previous, self.epoch = self.epoch, epoch
        changed = previous is not None and epoch != previous
        if changed:
            self.epoch_changes += 1
        complete = False
        if self._cursor is not None and not changed:
            complete = await self._read_changes(self._cursor, now) and await self._intact(now)
        elif self.snapshot is not None and not self._mirror.loaded:
            complete = await self._from_snapshot(self.snapshot, epoch, now)
            if complete:
                self.loaded_from = "snapshot"
            elif self.shared is not None:  # a new pod: the copy another sidecar left
                complete = await self._from_snapshot(self.shared, epoch, now)
                self.loaded_from = "store snapshot" if complete else ""
        restored = 0
        if not complete:
            had_entries = len(self._mirror) > 0
            await self._read_all(now)
            self.loaded_from = self.loaded_from or "store"
            # Owed until it completes: a write-back cut short (the store went away again) is
            # done again by the next reconciliation, even though that one reads incrementally.
            self._write_back_owed = self._write_back_owed or had_entries
        if self._write_back_owed:
            restored = await self._write_back(now)
            self._write_back_owed = False
        await self._purge(now)
        if changed or restored:
            log.warning(
                "token store lost data (epoch %s -> %s): wrote back %d unexpired revocations"
                " held here; refresh families lost with it are refused (fail closed)",
                _short(previous),
                _short(epoch),
                restored,
            )

    async def _read_all(self, now: int) -> None:
        """The cursor first, then every page: what is written during the scan comes after
        the cursor and is read by the incremental read that follows."""
        self._cursor = None
        cursor = await self._store.revocation_cursor()
        ahead = self._store.scan_ahead  # see TokenStore.scan_ahead
        first = not self._mirror.loaded
        # The first load takes pages grouped by (kind, issuer) without a lookup per row;
        # a later one (after a loss) merges, so what is new is reported (Watch).
        store, mirror = self._store, self._mirror
        path: tuple[Callable[[str, int, int], Awaitable[tuple[Any, str]]], Callable[[Any], object]]
        if first:
            path = (store.scan_revocation_groups, mirror.append_groups)
        else:
            path = (store.scan_revocations, mirror.merge)
        scan, take = path
        pending = asyncio.ensure_future(scan("", now, PAGE_ROWS))
        try:
            while True:
                rows, token = await pending
                if token and ahead:
                    pending = asyncio.ensure_future(scan(token, now, PAGE_ROWS))
                    for _ in range(_SEND_TURNS):  # its request out before this page is taken
                        await asyncio.sleep(0)
                take(rows)
                if not token:
                    break
                if not ahead:
                    pending = asyncio.ensure_future(scan(token, now, PAGE_ROWS))
                await asyncio.sleep(0)
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, StoreUnavailableError):
                    await pending
        self.full_reads += 1
        if not await self._read_changes(cursor, now):
            raise StoreUnavailableError()  # trimmed away during our own scan: next poll retries
        self._mirror.mark_loaded()

    def start_settling(self) -> None:
        """Settle the stages of a first load in a task of its own, a few per loop turn (see
        the module docstring): called once the sidecar serves (app/start.py), so none of it
        delays the start; `settled` starts it too, for whoever needs it first."""
        if self._mirror.settled:
            return
        if self._settling is None or self._settling.done():
            self._settling = asyncio.ensure_future(self._settle())

    async def _settle(self) -> None:
        mirror, stage = self._mirror, 0
        while not mirror.settled and stage < mirror.stages:
            mirror.settle(stage, stage + _SETTLE_STEP)
            stage += _SETTLE_STEP
            await asyncio.sleep(0)
        mirror.settle(0, mirror.stages)  # anything staged behind us (none: stages only fill
        # before the first load completes); a no-op otherwise

    async def settled(self) -> None:
        """Return once every staged entry is settled (at once when none is), settling in
        slices meanwhile. A caller cancelled meanwhile does not cancel the settling."""
        self.start_settling()
        settling = self._settling
        if settling is not None and not settling.done():
            await asyncio.shield(settling)

    async def _from_snapshot(
        self, keeper: SnapshotKeeper | StoreSnapshotKeeper, epoch: str, now: int
    ) -> bool:
        """Load the mirror from a snapshot (the local file's or the store's: the same
        checks) and read the store's writes since it; False (mirror empty again) when there
        is none or it cannot be used."""
        snapshot = await keeper.usable(epoch)
        if snapshot is None:
            return False
        why = "the store can no longer say what changed since it"
        self._mirror.clear()
        try:
            for _ in self._mirror.load_snapshot(snapshot):
                await asyncio.sleep(0)
            self._cursor = snapshot.cursor
            held = len(self._mirror)
            if await self._read_changes(snapshot.cursor, now) and await self._intact(now):
                self._mirror.mark_loaded()
                keeper.used(snapshot, held, len(self._mirror) - held)
                return True
        except ValueError as exc:  # records or cursor that are not this store's
            why = str(exc)
        finally:
            if not self._mirror.loaded:
                self._mirror.clear()
                self._cursor = None
        keeper.ignored(why)
        return False

    async def save_snapshot(self) -> bool:
        """Write the mirror to the snapshot file now, and offer the same copy to the store
        (written there only by the interval's lease holder); False when there is nothing to
        write or the local write failed (revocation_snapshot.SnapshotKeeper)."""
        keeper = self.snapshot
        if keeper is None:
            return False
        async with self._lock:
            cursor, epoch = self._cursor, self.epoch
            if not self._mirror.loaded or cursor is None or epoch is None:
                return False
            await self.settled()  # each triple once in the copy
            # Every write up to `cursor` is held now, and entries leave only by their horizon:
            # what the copy misses was written after `cursor`.
            copied = await keeper.copy(self._mirror)
        snapshot = await asyncio.to_thread(keeper.assemble, epoch, cursor, copied)
        del copied
        written = await keeper.write(snapshot)
        if self.shared is not None:
            await self.shared.offer(snapshot)
        return written

    async def _read_changes(self, cursor: str, now: int) -> bool:
        """Merge every write after `cursor`; False when the store cannot vouch for them."""
        while True:
            page = await self._store.revocations_since(cursor, now, PAGE_ROWS)
            if page is None:
                return False
            rows, cursor = page
            self._mirror.merge(rows)
            self._cursor = cursor
            if len(rows) < PAGE_ROWS:
                return True
            await asyncio.sleep(0)

    async def _intact(self, now: int) -> bool:
        """Whether the store still holds at least as many revocations as we do (Redis: a
        replica promoted without the last writes keeps the epoch and can keep the feed
        cursor too). Counted from a minute boundary past the clock-skew margin, so entries
        another sidecar's faster clock already purged do not look lost."""
        since = -(-(now + SKEW_MARGIN_S) // 60) * 60
        if not self._mirror.counted:
            await self.settled()  # a scan's copies are merged, and counted, when settled
        found = await self._store.count_revocations(since)
        return found is None or found >= self._mirror.count_from(since)

    async def _write_back(self, now: int) -> int:
        """Offer every held entry back to the store in chunks; returns how many it lacked."""
        restored = 0
        batch: list[Revocation] = []
        for chunk in self._mirror.chunks():
            batch.extend(r for r in chunk if r.expires_at > now)
            if len(batch) >= PAGE_ROWS:
                restored += await self._restore(batch)
                batch = []
        if batch:
            restored += await self._restore(batch)
        self.restored += restored
        return restored

    async def _restore(self, batch: list[Revocation]) -> int:
        deadline = deadline_for(self._clock.now(), self._store.timeout_s)
        return await self._store.restore(batch, deadline_ms=deadline)

    async def _purge(self, now: int) -> None:
        mirror = self._mirror
        step = 64  # buckets per loop turn: a few thousand entries at most to rewrite
        for start in range(0, mirror.buckets, step):
            mirror.purge(now, start, start + step)
            await asyncio.sleep(0)
        await self._store.purge(now)

    async def check_persistence(self) -> str:
        """Read the store's persistence; warn (one line) when it changed to a risky mode."""
        self.persistence = await check_persistence(self._store, self.persistence)
        return self.persistence


def _short(epoch: str | None) -> str:
    return (epoch or "-")[:8]
