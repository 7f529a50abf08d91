"""The refresh decision of `TokenStore.rotate` as one pure function, and the write deadline.

Memory and SQLite read the family, call `decide_rotation`, and apply what it returns inside
their own atomic step (the lock; the transaction), so the two cannot drift apart. Redis makes
the same decision in Lua (redis_scripts.py), where it must run inside the server's script;
the contract suite holds all three to the order written in `TokenStore.rotate`.
"""

from __future__ import annotations

import dataclasses

from sidecar.store.records import FamilyRecord, Revocation, RotateOutcome, RotateResult, Rotation


def decide_rotation(
    family: FamilyRecord | None, r: Rotation
) -> tuple[RotateResult, FamilyRecord | None]:
    """The outcome of `r` against `family` as read inside the store's atomic step, and the
    family record the store must write, or None when nothing changes. Only two outcomes
    write: a ROTATED that advanced the family (new current/previous/rotated_at) and REUSED
    (the family revoked, and `result.revocation` recorded in the same step)."""
    if family is None:
        return RotateResult(RotateOutcome.UNKNOWN, None), None
    if family.subject != r.subject or family.issuer != r.issuer:
        return RotateResult(RotateOutcome.MISMATCH, family), None
    if family.revoked or r.now >= family.expires_at:
        return RotateResult(RotateOutcome.REVOKED, family), None
    if r.presented_jti == family.previous_jti and r.next_jti == family.current_jti:
        return RotateResult(RotateOutcome.ROTATED, family), None  # the same call, retried
    current = r.presented_jti == family.current_jti
    grace = r.presented_jti == family.previous_jti and r.now < family.rotated_at + r.grace_s
    if current or grace:
        if r.scope and not scope_within(r.scope, family.scope):
            return RotateResult(RotateOutcome.SCOPE_WIDENED, family), None
        if grace:
            return RotateResult(RotateOutcome.GRACE, family), None
        rotated = dataclasses.replace(
            family, current_jti=r.next_jti, previous_jti=r.presented_jti, rotated_at=r.now
        )
        return RotateResult(RotateOutcome.ROTATED, rotated), rotated
    # A retired token came back: RFC 9700 section 4.14.2, revoke the whole family, until the
    # last access token minted from it has expired too.
    revocation = Revocation(
        "family", family.issuer, r.family_id, family.expires_at + r.revoke_extra_s
    )
    revoked = dataclasses.replace(family, revoked=True)
    return RotateResult(RotateOutcome.REUSED, revoked, revocation), revoked


def scope_within(requested: str, granted: str) -> bool:
    """Whether every scope token of `requested` is in `granted` (space-separated)."""
    return set(requested.split()) <= set(granted.split())


def past(deadline_ms: int, now_s: float) -> bool:
    """Whether a write decided at `now_s` (epoch seconds) is past `deadline_ms`."""
    return now_s * 1000 > deadline_ms


def deadline_for(now_s: float, timeout_s: float, time_left_s: float | None = None) -> int:
    """The deadline (epoch ms) of a write started at `now_s`: no later than the moment its
    caller stops waiting, i.e. the store's own timeout or the call's remaining time (a gRPC
    deadline), whichever comes first."""
    budget = timeout_s if time_left_s is None else max(0.0, min(timeout_s, time_left_s))
    return int((now_s + budget) * 1000)
