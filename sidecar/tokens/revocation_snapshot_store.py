"""The revocation snapshot kept in the store (issue 16): a new pod starts like a restart.

A restart loads its local snapshot (tokens/revocation_snapshot.py) in ~0.9 s at a million
revocations; a new pod has no data directory yet and reads the whole store, which on Redis
costs the sidecar and the server together more than the two seconds of the target (the
server's ZSCANs and this process share the cores). So one sidecar per interval also offers
its snapshot's bytes to the store (`SnapshotStore.write_snapshot`, Redis only:
store/redis_snapshot.py), and a sidecar with no usable local snapshot tries that copy through
the same path as a local one (`StoreSync._from_snapshot`): used only when it names this kind
of store and its current epoch, followed by the store's writes since its cursor and the
intact check; on any doubt (damaged or foreign bytes, another epoch, a feed trimmed past its
cursor, fewer entries in the store than in it) it is dropped and the full read runs. Like a
local one, it may only ever add revocations the store has or had, and nothing is ever written
back from it.

Writing is an optimisation: it happens where the local snapshot is written (at most every
SNAPSHOT_EVERY_S when the cursor moved, and at stop), only for the lease holder of the
interval, off the event loop for the encoding, and any failure is one warning line (then
debug), never a failed call or stop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from sidecar.errors import StoreUnavailableError
from sidecar.store.base import SnapshotStore
from sidecar.tokens.revocation_snapshot import (
    SNAPSHOT_EVERY_S,
    Snapshot,
    SnapshotError,
    decode,
    encode,
)

log = logging.getLogger("sidecar.tokens.revocation_snapshot")  # beside the local one's lines


class StoreSnapshotKeeper:
    """Reads and offers one store's snapshot; the same `usable` / `used` / `ignored` as
    SnapshotKeeper, so StoreSync loads either the same way."""

    where = "the store's snapshot"

    def __init__(self, store: SnapshotStore, store_kind: str) -> None:
        self._store, self.store_kind = store, store_kind
        self.holder = secrets.token_hex(8)  # this process, for the writer's lease
        self._warned = False
        self.loads = 0  # starts loaded from it
        self.written = 0
        self.skipped = 0  # offers another sidecar's lease turned down

    async def usable(self, epoch: str) -> Snapshot | None:
        """The stored snapshot when it is one of this kind of store at `epoch` (why not:
        logged; none at all is the usual first start of a fleet and logs nothing)."""
        try:
            data = await self._store.read_snapshot()
        except StoreUnavailableError:
            self.ignored("the store did not answer")
            return None
        if data is None:
            return None
        try:
            snapshot = await asyncio.to_thread(decode, data)
        except SnapshotError as exc:
            log.warning("%s ignored (%s): loading from the store", self.where, exc)
            return None
        if (snapshot.store, snapshot.epoch) != (self.store_kind, epoch):
            self.ignored("of another store or epoch")
            return None
        return snapshot

    def used(self, snapshot: Snapshot, held: int, since: int) -> None:
        self.loads += 1
        log.info(
            "revocations: %d from %s, %d more from the store's writes since it",
            held,
            self.where,
            since,
        )

    def ignored(self, why: str) -> None:
        log.info("%s ignored (%s): loading from the store", self.where, why)

    async def offer(self, snapshot: Snapshot) -> bool:
        """Write `snapshot` (the one just written to the local file) to the store when this
        sidecar holds the interval's lease; False when it does not, or the write failed
        (logged once). Encoded only by the holder, off the event loop (its digest)."""

        async def make() -> list[bytes]:
            return await asyncio.to_thread(encode, snapshot)

        try:
            wrote = await self._store.write_snapshot(
                make, holder=self.holder, every_s=SNAPSHOT_EVERY_S
            )
        except StoreUnavailableError as exc:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "cannot write %s: %s", self.where, type(exc).__name__)
            return False
        if wrote:
            self.written += 1
        else:
            self.skipped += 1
        return wrote
