"""The local mirror of live revocations: what lets Verify check revocation with no I/O.

Verify runs on every internal call, so it must not wait on a store. Each sidecar keeps the
revocations still in force in a dict, loaded from the store at start, updated on its own
writes, and (with a shared store) by the store's change feed. An entry outlives the token it
revokes (`expires_at` is the token's or family's end), so dropping expired entries never
un-revokes a token that could still verify.

Entries leave only by their own horizon (`purge`), never because the store lacks them
(issue 13): a store that lost its data (Redis restarted empty, a failover to a replica that
missed writes) would otherwise un-revoke them at every sidecar. `reconcile` merges the store's
view in and returns what the store lacks, for the caller to write back
(tokens/store_sync.py). Every entry ever added went through the store first (own writes after
the store accepted them, the feed and loads from it), so an entry held before a load that the
load lacks was lost by the store.

Staleness (issue 3, `store.on_unavailable`): while the store is unreachable the mirror holds
the last known revocations and may miss newer ones. The composition root marks it stale; with
`refuse_while_stale` every lookup then raises StoreUnavailableError (Verify fails UNAVAILABLE),
otherwise lookups answer from the last known state ("degrade", the default).

Watch (issue 15): `on_new` hears of every entry new to the mirror, whichever path brought it
(this sidecar's Revoke and refresh reuse, the store's feed, reconciliation), and only after
the entry is in place, so Verify here refuses what the event voids before it is sent. A
duplicate or a longer horizon for a known entry voids nothing new and is not reported. The
first full load is the baseline and reports nothing (no subscriber can hold a decision of a
log that did not exist yet). `on_reset` hears of the mirror turning stale under
`refuse_while_stale`: from then on Verify refuses everything, so every cached decision is void.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from sidecar.errors import StoreUnavailableError
from sidecar.store.base import Revocation, RevocationKind

_Key = tuple[RevocationKind, str, str]


class RevocationMirror:
    def __init__(self, *, refuse_while_stale: bool = False) -> None:
        self._entries: dict[_Key, int] = {}
        self.refuse_while_stale = refuse_while_stale
        self._stale = False
        self._loaded = False
        self.on_new: Callable[[Sequence[Revocation]], None] | None = None
        self.on_reset: Callable[[], None] | None = None

    @property
    def stale(self) -> bool:
        return self._stale

    def set_stale(self, stale: bool) -> None:
        """The store became unreachable (True) or the mirror was reloaded from it (False)."""
        was, self._stale = self._stale, stale
        if stale and not was and self.refuse_while_stale and self.on_reset is not None:
            self.on_reset()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, revocation: Revocation) -> None:
        key = (revocation.kind, revocation.issuer, revocation.key)
        known = key in self._entries
        # Keep the longest horizon if the same thing is revoked twice.
        if self._entries.get(key, 0) < revocation.expires_at:
            self._entries[key] = revocation.expires_at
        if not known and self.on_new is not None:
            self.on_new((revocation,))

    def held(self) -> list[Revocation]:
        """Every entry now held (a snapshot; take it before reading the store's view)."""
        entries = self._entries.items()
        return [Revocation(kind, iss, key, until) for (kind, iss, key), until in entries]

    def reconcile(
        self, store_view: Iterable[Revocation], held_before: Iterable[Revocation], now: int
    ) -> list[Revocation]:
        """Merge the store's full view in (keeping the longest horizon, as `add`), forget
        what has expired by `now`, and return the entries of `held_before` (a `held()` taken
        before the view was read) still in force that the view lacks or holds with a shorter
        horizon: the store lost them. Nothing in force is ever dropped here.

        This replaced `replace` (issue 13): swapping in the store's view un-revoked every
        token whose revocation the store had lost.
        """
        in_store: dict[_Key, int] = {}
        new: list[Revocation] = []
        entries = self._entries
        for r in store_view:
            key = (r.kind, r.issuer, r.key)
            in_store[key] = max(in_store.get(key, 0), r.expires_at)
            if key not in entries:
                new.append(r)
            # Keep the longest horizon, as `add` does (no per-entry callback: one batch below).
            if entries.get(key, 0) < r.expires_at:
                entries[key] = r.expires_at
        lost = [
            r
            for r in held_before
            if r.expires_at > now and in_store.get((r.kind, r.issuer, r.key), 0) < r.expires_at
        ]
        self.purge(now)
        # The first full load is the Watch baseline: no subscriber holds a decision yet.
        baseline, self._loaded = not self._loaded, True
        if new and not baseline and self.on_new is not None:
            self.on_new(new)
        return lost

    def is_revoked(self, issuer: str, jti: str, family_id: str) -> bool:
        """Raises StoreUnavailableError when stale and `refuse_while_stale` (fail closed)."""
        if self._stale and self.refuse_while_stale:
            raise StoreUnavailableError()
        entries = self._entries
        if ("jti", issuer, jti) in entries:
            return True
        return bool(family_id) and ("family", issuer, family_id) in entries

    def purge(self, now: int) -> int:
        """Forget entries whose tokens have expired anyway; returns how many were dropped."""
        expired = [key for key, until in self._entries.items() if until <= now]
        for key in expired:
            del self._entries[key]
        return len(expired)
