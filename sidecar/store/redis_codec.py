"""Python values to and from what `RedisTokenStore` keeps: family hashes and feed entries."""

from __future__ import annotations

import json
from typing import Any

from sidecar.store.base import FamilyRecord, Revocation
from sidecar.store.redis_keys import FAMILY_FIELDS, decode_member

StreamEntries = list[tuple[str, list[tuple[str, dict[str, str]]]]]


def family_fields(family: FamilyRecord) -> dict[str, str | int]:
    return {
        "family_id": family.family_id,
        "issuer": family.issuer,
        "subject": family.subject,
        "audience": json.dumps(list(family.audience)),
        "scope": family.scope,
        "client_id": family.client_id,
        "claims_json": family.claims_json,
        "created_at": family.created_at,
        "expires_at": family.expires_at,
        "current_jti": family.current_jti,
        "revoked": int(family.revoked),
        "previous_jti": family.previous_jti,
        "rotated_at": family.rotated_at,
    }


def family_from(fields: dict[str, str]) -> FamilyRecord:
    f = {name: fields.get(name, "") for name in FAMILY_FIELDS}
    return FamilyRecord(
        family_id=f["family_id"],
        issuer=f["issuer"],
        subject=f["subject"],
        audience=tuple(json.loads(f["audience"] or "[]")),
        scope=f["scope"],
        client_id=f["client_id"],
        claims_json=f["claims_json"],
        created_at=int(f["created_at"] or 0),
        expires_at=int(f["expires_at"] or 0),
        current_jti=f["current_jti"],
        revoked=f["revoked"] == "1",
        previous_jti=f["previous_jti"],
        rotated_at=int(f["rotated_at"] or 0),
    )


def revocation_from(fields: dict[str, str]) -> Revocation | None:
    """A feed entry's revocation (`r`: member, `e`: expires_at); None when malformed."""
    member, expires_at = fields.get("r"), fields.get("e", "")
    if member is None or not expires_at.lstrip("-").isdigit():
        return None
    return decode_member(member, int(expires_at))


def stream_entries(reply: Any) -> StreamEntries:
    """XREAD's reply as a list (RESP2: list of pairs; RESP3: a map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(stream, entries) for stream, entries in reply.items()]
    return [(stream, entries) for stream, entries in reply]
