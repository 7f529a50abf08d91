"""The local mirror of live revocations: what lets Verify check revocation with no I/O.

Verify runs on every internal call, so it must not wait on a store. Each sidecar keeps the
revocations still in force in a compact exact set (tokens/revocation_set.py: ~31 bytes an
entry, no Python object per entry; issue 16), loaded from the store at start in pages,
updated on its own writes, by the store's change feed, and by incremental reconciliation.
An entry outlives the token it revokes (`expires_at` is the token's or family's end), so
dropping expired entries never un-revokes a token that could still verify.

Entries leave only by their own horizon (`purge`), never because the store lacks them
(issue 13): a store that lost its data (Redis restarted empty, a failover to a replica that
missed writes) would otherwise un-revoke them at every sidecar. `merge` takes the store's
pages in; `chunks` hands the held entries out bucket by bucket for the write-back
(tokens/store_sync.py), so no full copy of a million entries is ever built.

Staleness (issue 3, `store.on_unavailable`): while the store is unreachable the mirror holds
the last known revocations and may miss newer ones. The composition root marks it stale; with
`refuse_while_stale` every lookup then raises StoreUnavailableError (Verify fails UNAVAILABLE),
otherwise lookups answer from the last known state ("degrade", the default).

Watch (issue 15): `on_new` hears of every entry new to the mirror, whichever path brought it
(this sidecar's Revoke and refresh reuse, the store's feed, reconciliation), and only after
the entry is in place, so Verify here refuses what the event voids before it is sent. A
duplicate or a longer horizon for a known entry voids nothing new and is not reported. The
first full load is the baseline (until `mark_loaded`) and reports nothing (no subscriber can
hold a decision of a log that did not exist yet). `on_reset` hears of the mirror turning stale under
`refuse_while_stale`: from then on Verify refuses everything, so every cached decision is void.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from sidecar.errors import StoreUnavailableError
from sidecar.store.base import Revocation, RevocationGroup, RevocationRow
from sidecar.tokens.revocation_set import RevocationSet
from sidecar.tokens.revocation_staging import STAGE_MASK

STAGES = STAGE_MASK + 1

if TYPE_CHECKING:
    from sidecar.tokens.revocation_snapshot import Snapshot


class RevocationMirror:
    def __init__(self, *, refuse_while_stale: bool = False) -> None:
        self._set = RevocationSet()
        self.refuse_while_stale = refuse_while_stale
        self._stale = False
        self._loaded = False
        self.on_new: Callable[[Sequence[Revocation]], None] | None = None
        self.on_reset: Callable[[], None] | None = None

    @property
    def stale(self) -> bool:
        return self._stale

    @property
    def loaded(self) -> bool:
        return self._loaded

    def set_stale(self, stale: bool) -> None:
        """The store became unreachable (True) or the mirror was reloaded from it (False)."""
        was, self._stale = self._stale, stale
        if stale and not was and self.refuse_while_stale and self.on_reset is not None:
            self.on_reset()

    def __len__(self) -> int:
        return len(self._set)

    def add(self, revocation: Revocation) -> None:
        """Record one revocation (the longest horizon wins); reported to `on_new` when new."""
        r = revocation
        if self._set.add(r.kind, r.issuer, r.key, r.expires_at) and self.on_new is not None:
            self.on_new((revocation,))

    def merge(self, rows: Iterable[RevocationRow]) -> int:
        """Take a page of the store's revocations in (longest horizon wins, as `add`); the
        new ones are reported in one batch once `mark_loaded` was called. Returns how many
        were new. Call with pages of a few thousand rows: a page is one synchronous step."""
        new = self._set.add_rows(rows)
        if new and self._loaded and self.on_new is not None:
            self.on_new([Revocation(*row) for row in new])
        return len(new)

    def append_groups(self, groups: Iterable[RevocationGroup]) -> None:
        """The first full load's fast path (before `mark_loaded`): stage a page without
        looking for each entry first (tokens/revocation_staging.py). Lookups are exact at
        once; `settle` then sorts the stages into buckets, merges copies and counts horizons
        (after the sidecar serves: tokens/store_sync.py)."""
        if self._loaded:
            raise RuntimeError("append_groups is for the first load only; use merge")
        for kind, issuer, keys, untils in groups:
            self._set.append_group(kind, issuer, keys, untils)

    def settle(self, start: int, stop: int) -> int:
        """Settle stages [start, stop) of the first load (see `append_groups`); returns how
        many copies of a triple were merged. Any order, any slices; idempotent."""
        return self._set.settle(start, stop)

    @property
    def settled(self) -> bool:
        """Whether every stage of the first load is settled (`count_from` is then O(minutes)
        and `export` does not settle first)."""
        return self._set.settled

    @property
    def counted(self) -> bool:
        """Whether `count_from` answers without settling first (settled, or only a snapshot
        staged: no copies to merge)."""
        return self._set.counted

    @property
    def stages(self) -> int:
        return STAGES

    def load_snapshot(self, snapshot: Snapshot) -> Iterator[None]:
        """Fill the empty mirror from a snapshot (tokens/revocation_snapshot.py), one chunk
        per step; raises ValueError on records that do not fit (then `clear`)."""
        if self._loaded:
            raise RuntimeError("a snapshot can only be the first load")
        return self._set.load(snapshot.issuers, snapshot.records, snapshot.horizons)

    def clear(self) -> None:
        """Drop everything before the first load completed (a snapshot found unusable)."""
        if self._loaded:
            raise RuntimeError("entries leave a loaded mirror only by their horizon")
        self._set = RevocationSet()

    def export(self, start: int, stop: int) -> tuple[bytes, bytes]:
        """Buckets [start, stop) for a snapshot (see `RevocationSet.export`)."""
        return self._set.export(start, stop)

    @property
    def issuers(self) -> list[str]:
        return self._set.issuers

    def mark_loaded(self) -> None:
        """The first full load is complete: from now on `merge` reports what is new."""
        self._loaded = True

    def horizon(self, revocation: Revocation) -> int | None:
        """The horizon held for `revocation`'s triple, or None when it is not held."""
        r = revocation
        return self._set.horizon(r.kind, r.issuer, r.key)

    def chunks(self) -> Iterator[list[Revocation]]:
        """Every held entry, one bucket (a few dozen entries at a million) at a time, each
        a snapshot when reached. Entries added meanwhile may or may not appear; they went
        through the store first, so a write-back never needs them."""
        entries = self._set
        for b in range(entries.buckets):
            found = entries.bucket_entries(b)
            if found:
                yield found

    def __iter__(self) -> Iterator[Revocation]:
        return iter(self._set)

    def is_revoked(self, issuer: str, jti: str, family_id: str) -> bool:
        """Raises StoreUnavailableError when stale and `refuse_while_stale` (fail closed)."""
        if self._stale and self.refuse_while_stale:
            raise StoreUnavailableError()
        entries = self._set
        if not len(entries):
            return False
        if entries.contains("jti", issuer, jti):
            return True
        return bool(family_id) and entries.contains("family", issuer, family_id)

    def purge(self, now: int, start: int = 0, stop: int | None = None) -> int:
        """Forget entries whose tokens have expired anyway (in buckets [start, stop), all by
        default, so a caller can spread the work); returns how many were dropped."""
        entries = self._set
        return entries.purge(now, start, entries.buckets if stop is None else stop)

    def count_from(self, minute_start: int) -> int:
        """How many held entries have `expires_at >= minute_start` (a multiple of 60)."""
        return self._set.count_from(minute_start)

    @property
    def buckets(self) -> int:
        return self._set.buckets

    def nbytes(self) -> int:
        """Bytes of record and horizon buffers (for sizing; object headers not counted)."""
        return self._set.nbytes()
