"""The Watch stream's events (issue 15): their kinds, what each names, and which key-ring
changes void decisions. The ordered log that carries them is tokens/event_log.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sidecar.keys.ring import KeyRing

__all__ = ["EVENT_KINDS", "REVOCATION_KINDS", "Event", "EventKind", "retired_kids"]

EventKind = Literal["token_revoked", "family_revoked", "key_retired", "decisions_reset"]
EVENT_KINDS: tuple[EventKind, ...] = (
    "token_revoked",
    "family_revoked",
    "key_retired",
    "decisions_reset",
)
# The event a revocation of each kind (store/base.py `Revocation.kind`) is published as.
REVOCATION_KINDS: dict[str, EventKind] = {"jti": "token_revoked", "family": "family_revoked"}


@dataclass(frozen=True, slots=True)
class Event:
    """One log entry. `subject` is the jti, the family id (sid) or the kid, by `kind`;
    identifiers only, never token text. `iss` is empty for key and reset events."""

    sequence: int
    kind: EventKind
    iss: str = ""
    subject: str = ""


def retired_kids(old: KeyRing | None, new: KeyRing | None) -> list[str]:
    """The kids of `old` whose tokens `new` no longer verifies as before: removed, or bound
    to other key material or another algorithm (every decision made with them is void).
    Added keys and a change of signing key void nothing."""
    if old is None:
        return []
    retired = []
    for key in old.keys:
        now = new.get(key.kid) if new is not None else None
        if now is None or (now.alg, now.thumbprint) != (key.alg, key.thumbprint):
            retired.append(key.kid)
    return sorted(retired)
