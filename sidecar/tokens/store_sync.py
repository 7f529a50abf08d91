"""Keeping the revocation mirror and the store in step, and noticing a store that lost data.

Every reconciliation (start-up, each poll, each reconnection of the feed) does, in order:

1. take a snapshot of the mirror (`RevocationMirror.held`);
2. ask the store its identity (`TokenStore.epoch`, set once if absent): an answer different
   from the last one means the data set was replaced: Redis restarted without persistence,
   a failover to a replica that never had the data, a new SQLite file;
3. read the store's live revocations and merge them into the mirror: nothing in force is
   dropped, entries leave the mirror only by their own horizon;
4. write back (`TokenStore.restore`) every entry of the snapshot still in force that the store
   lacks. Any sidecar may do it, several may do it at once (a revocation written twice is one
   revocation), and a sidecar started after the loss loads what the others wrote back.

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

Persistence: `check_persistence` reads how the store keeps data (`TokenStore.persistence`) and
warns in one line whenever the answer is one that loses data on a restart.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from sidecar.clock import Clock
from sidecar.store.base import TokenStore, deadline_for
from sidecar.tokens.revocation import RevocationMirror

log = logging.getLogger(__name__)

# What each risky persistence mode loses when the store restarts; other modes are fine.
RISKY_PERSISTENCE = {
    "none": "Redis keeps nothing on disk: a restart loses every refresh family, and revocations"
    " survive only in running sidecars",
    "rdb": "Redis saves snapshots only: a restart loses every write since the last one",
    "aof-no": "Redis AOF without fsync (appendfsync no): a host crash loses the writes the OS"
    " had not flushed (up to ~30 s)",
    "unknown": "Redis will not say how it persists (CONFIG refused or renamed)",
}


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
        # The poll and the feed's reconnection may both reconcile: one at a time, so a loss
        # is written back and reported once, not once per path.
        self._lock = asyncio.Lock()

    async def reconcile(self) -> None:
        """One reconciliation; raises StoreUnavailableError (the next one tries again)."""
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        now_s = self._clock.now()
        now = int(now_s)
        held = self._mirror.held()
        deadline = deadline_for(now_s, self._store.timeout_s)
        epoch = await self._store.epoch(secrets.token_hex(16), deadline_ms=deadline)
        previous, self.epoch = self.epoch, epoch
        changed = previous is not None and epoch != previous
        if changed:
            self.epoch_changes += 1
        lost = self._mirror.reconcile(await self._store.revocations(now), held, now)
        if lost:
            deadline = deadline_for(self._clock.now(), self._store.timeout_s)
            await self._store.restore(lost, deadline_ms=deadline)
            self.restored += len(lost)
        if changed or lost:
            log.warning(
                "token store lost data (epoch %s -> %s): wrote back %d unexpired revocations"
                " held here; refresh families lost with it are refused (fail closed)",
                _short(previous),
                _short(epoch),
                len(lost),
            )

    async def check_persistence(self) -> str:
        """Read the store's persistence; warn (one line) when it changed to a risky mode."""
        mode = await self._store.persistence()
        if mode != self.persistence and mode in RISKY_PERSISTENCE:
            log.warning(
                "token store persistence=%s: %s; production needs appendonly yes with"
                " appendfsync everysec or always (docs/operations.md)",
                mode,
                RISKY_PERSISTENCE[mode],
            )
        self.persistence = mode
        return mode


def _short(epoch: str | None) -> str:
    return (epoch or "-")[:8]
