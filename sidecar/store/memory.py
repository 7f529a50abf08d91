"""The reference `TokenStore`: plain dicts in one process.

For tests and single-process deployments: state dies with the process, and two sidecars never
share it. It defines the behaviour the other stores must match (the contract suite runs against
all of them), so it stays as plain as the protocol allows.
"""

from __future__ import annotations

import asyncio
import dataclasses

from sidecar.errors import StoreUnavailableError
from sidecar.store.base import (
    FamilyRecord,
    Revocation,
    RevocationFeed,
    RevocationKind,
    RotateOutcome,
    RotateResult,
)

_RevocationKey = tuple[RevocationKind, str, str]


class MemoryTokenStore:
    """A `TokenStore` over dicts; every method may raise StoreUnavailableError after `close`."""

    def __init__(self) -> None:
        self._families: dict[str, FamilyRecord] = {}
        self._revocations: dict[_RevocationKey, Revocation] = {}
        # Every multi-step operation holds this lock. Today none of them awaits between its
        # read and its write, so the event loop alone makes them atomic; the lock keeps them
        # atomic if one ever does (an await there would otherwise let two rotates interleave).
        self._lock = asyncio.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError()

    async def ping(self) -> None:
        self._check_open()

    async def create_family(self, family: FamilyRecord) -> None:
        self._check_open()
        async with self._lock:
            if family.family_id in self._families:
                raise ValueError("family id already exists")
            self._families[family.family_id] = family

    async def get_family(self, family_id: str) -> FamilyRecord | None:
        self._check_open()
        return self._families.get(family_id)

    async def rotate(
        self, family_id: str, presented_jti: str, next_jti: str, now: int, grace_s: int = 0
    ) -> RotateResult:
        self._check_open()
        async with self._lock:
            family = self._families.get(family_id)
            if family is None:
                return RotateResult(RotateOutcome.UNKNOWN, None)
            if family.revoked or now >= family.expires_at:
                return RotateResult(RotateOutcome.REVOKED, family)
            if presented_jti == family.current_jti:
                rotated = dataclasses.replace(
                    family, current_jti=next_jti, previous_jti=presented_jti, rotated_at=now
                )
                self._families[family_id] = rotated
                return RotateResult(RotateOutcome.ROTATED, rotated)
            if presented_jti == family.previous_jti and now < family.rotated_at + grace_s:
                return RotateResult(RotateOutcome.GRACE, family)
            # A retired token came back: RFC 9700 section 4.14.2 says revoke the whole family.
            revoked = self._revoke_family(family)
            self._put_revocation(Revocation("family", family.issuer, family_id, family.expires_at))
            return RotateResult(RotateOutcome.REUSED, revoked)

    async def revoke(self, revocation: Revocation) -> None:
        self._check_open()
        async with self._lock:
            self._put_revocation(revocation)
            if revocation.kind == "family":
                family = self._families.get(revocation.key)
                if family is not None:
                    self._revoke_family(family)

    async def revocations(self, now: int) -> list[Revocation]:
        self._check_open()
        async with self._lock:
            self._revocations = {k: r for k, r in self._revocations.items() if r.expires_at > now}
            self._families = {k: f for k, f in self._families.items() if f.expires_at > now}
            return list(self._revocations.values())

    async def open_revocation_feed(self) -> RevocationFeed | None:
        self._check_open()
        return None  # one process: its own revocations reach its mirror directly

    async def close(self) -> None:
        self._closed = True
        self._families.clear()
        self._revocations.clear()

    def _revoke_family(self, family: FamilyRecord) -> FamilyRecord:
        revoked = dataclasses.replace(family, revoked=True)
        self._families[family.family_id] = revoked
        return revoked

    def _put_revocation(self, revocation: Revocation) -> None:
        key: _RevocationKey = (revocation.kind, revocation.issuer, revocation.key)
        old = self._revocations.get(key)
        if old is None or old.expires_at < revocation.expires_at:
            self._revocations[key] = revocation
