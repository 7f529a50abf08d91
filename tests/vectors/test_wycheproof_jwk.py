"""Wycheproof `json_web_key_test.json`: key sets that must be refused, tokens that must not pass.

Each group holds a private and/or public JWK Set and tokens signed "with" it. The sidecar
loads a set the way it loads its own (`parse_jwks` into a `KeyRing`); a `KeyMaterialError`
at load means every token of the group is refused (the sidecar would not start). Otherwise
the token goes through the sidecar's strict JWS verifier (`verify_compact`: the payload of a
JWS vector need not be a JWT claim set, so the JSON-object check of `decode_jws` is left out).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.errors import KeyMaterialError, TokenError
from sidecar.keys.loader import parse_jwks
from sidecar.keys.ring import KeyRing
from sidecar.tokens.jws import verify_compact
from tests.support.vectors import vectors_dir

VECTORS = vectors_dir() / "wycheproof"
JWK_TESTS = VECTORS / "testvectors_v1" / "json_web_key_test.json"

# Cases labelled "valid" that we refuse on purpose, with the reason. Empty: every valid
# case (tcIds 2, 5, 13, 14, 15) verifies.
VALID_REFUSED: dict[int, str] = {}

# Why each invalid case is refused (a substring of the refusal), so a case that starts being
# refused for some other, accidental reason shows up.
INVALID_BECAUSE: dict[int, str] = {
    1: "cannot mix HMAC",  # oct + EC in one set: key confusion (CVE-2024-33663 class)
    3: "SIGNATURE_INVALID",  # good keys, tampered signature
    # The duplicate-kid set is refused earlier than for its duplicate: the second key's `k`
    # has non-zero unused trailing bits. Duplicates are covered in tests/unit/test_key_*.py.
    4: "non-canonical base64url",
    6: "'use' must be",  # RSA1_5 / use enc: an encryption key
    7: "ROCA",  # CVE-2017-15361 modulus
    8: "1024 bits",
    9: "public exponent",  # e = 1: the "signature" is the message
    10: "31 bytes",
    11: "47 bytes",
    12: "63 bytes",
    16: "0 bytes",
    17: "0 bytes",
    18: "0 bytes",
    19: "requires curve P-521",  # alg ES521 (read as ES512) on a P-256 key
    20: "'ES224' is not supported",
    21: "'use' must be",
    22: "not a valid P-256 key",  # point off the curve (invalid-curve attack)
    23: "must be 48 octets",  # P-256 coordinates labelled P-384
    24: "key type 'RSA' cannot be used with 'ES256'",
    25: "'A256GCM' is not supported",
    26: "'A256KW' is not supported",
}


def _load_cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    # A missing vector file must fail the run loudly, never turn into "0 tests, all green".
    if not JWK_TESTS.is_file():
        raise FileNotFoundError(f"Wycheproof vectors missing: {JWK_TESTS}")
    document = json.loads(JWK_TESTS.read_text(encoding="utf-8"))
    return [(group, case) for group in document["testGroups"] for case in group["tests"]]


CASES = _load_cases()


def _ring(group: dict[str, Any]) -> KeyRing:
    """Both key sets must load; verification uses the public one when there is one."""
    ring: KeyRing | None = None
    for part in ("private", "public"):
        if part in group:
            keys = parse_jwks(group[part])
            # Which key signs is irrelevant to verifying; naming one lets a set of several
            # signing-capable keys (tc 2) form a ring, as the sidecar's config would.
            signer = next((key.kid for key in keys if key.can_sign), None)
            ring = KeyRing(keys, signing_kid=signer)
    assert ring is not None, "group without keys"
    return ring


def _accepted(group: dict[str, Any], token: str) -> tuple[bool, str]:
    try:
        ring = _ring(group)
    except KeyMaterialError as exc:
        return False, f"key set refused: {exc}"
    try:
        verify_compact(token, ring)
    except TokenError as exc:
        return False, f"token refused: {exc.reason}"
    return True, "accepted"


def test_vector_file_has_every_case() -> None:
    assert len(CASES) == json.loads(JWK_TESTS.read_text())["numberOfTests"] == 26
    invalid = {case["tcId"] for _group, case in CASES if case["result"] == "invalid"}
    assert invalid == set(INVALID_BECAUSE)


@pytest.mark.parametrize(
    ("group", "case"),
    CASES,
    ids=[f"tc{case['tcId']}-{case['comment']}" for _group, case in CASES],
)
def test_wycheproof_json_web_key(group: dict[str, Any], case: dict[str, Any]) -> None:
    accepted, why = _accepted(group, case["jws"])
    if case["result"] == "invalid":
        assert not accepted, f"invalid token accepted ({group['comment']})"
        assert INVALID_BECAUSE[case["tcId"]] in why
    elif case["tcId"] in VALID_REFUSED:
        assert not accepted, "documented refusal no longer happens: update VALID_REFUSED"
    else:
        assert accepted, f"valid token refused: {why}"
