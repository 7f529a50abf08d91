"""The revocation mirror forgets an entry only by its own horizon, never because the store
lacks it (issue 13): reconciliation merges the store's view in and returns what it lost."""

from __future__ import annotations

from sidecar.store.base import Revocation
from sidecar.tokens.revocation import RevocationMirror

NOW = 1_700_000_000


def test_reconcile_with_an_empty_store_keeps_every_entry_in_force_and_returns_them() -> None:
    mirror = RevocationMirror()
    held = [Revocation("jti", "iss", "a", NOW + 60), Revocation("family", "iss", "f", NOW + 90)]
    expired = Revocation("jti", "iss", "old", NOW)
    for revocation in [*held, expired]:
        mirror.add(revocation)
    lost = mirror.reconcile([], mirror.held(), NOW)
    assert set(lost) == set(held)
    assert mirror.is_revoked("iss", "a", "") and mirror.is_revoked("iss", "other", "f")
    assert not mirror.is_revoked("iss", "old", "")  # gone by its own horizon
    assert len(mirror) == 2


def test_reconcile_merges_the_store_view_keeping_the_longest_horizon() -> None:
    mirror = RevocationMirror()
    mirror.add(Revocation("jti", "iss", "a", NOW + 60))
    held = mirror.held()
    view = [Revocation("jti", "iss", "a", NOW + 30), Revocation("jti", "iss", "b", NOW + 10)]
    lost = mirror.reconcile(view, held, NOW)
    # The store holds `a` with a shorter horizon than ours: that is a loss too.
    assert lost == [Revocation("jti", "iss", "a", NOW + 60)]
    assert sorted(r.key for r in mirror.held()) == ["a", "b"]
    assert mirror.reconcile(view, [], NOW + 20) == []
    assert [r.key for r in mirror.held()] == ["a"]


def test_entries_added_after_the_snapshot_are_never_reported_lost() -> None:
    """A revocation written while the view was being read is not in the view; it was not
    lost, so it must not be counted or logged as such."""
    mirror = RevocationMirror()
    held = mirror.held()
    mirror.add(Revocation("jti", "iss", "new", NOW + 60))
    assert mirror.reconcile([], held, NOW) == []
    assert mirror.is_revoked("iss", "new", "")
