"""Public JWS conformance vectors against `verify_compact` (the signature layer).

Sources (../shared/vectors/README.md): Wycheproof `json_web_signature_test.json` (all cases)
and the JWS cases of `json_web_crypto_test.json`; the RFC 7520 cookbook compact outputs, its
RFC 7797 (`b64: false`) and RFC 8037 (Ed25519) examples, and every JSON serialisation.

Wycheproof payloads are not JWT claim sets (`Zm9v` is "foo"), so a case is "accepted" iff
`verify_compact` returns. The rules:

* an invalid case is never accepted;
* nothing but a `TokenError` ever escapes;
* a valid case is accepted, or refused for exactly the reason listed in `EXPECTED_REFUSALS`.

Keys are loaded with `parse_jwk`/`parse_jwks` into a `KeyRing`; a `KeyMaterialError` at load
time (hygiene: 1024-bit RSA, short HMAC secret, `use: enc`, ...) leaves the group with
an empty ring, so all its tokens must be refused, as the sidecar would refuse to start.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from sidecar.errors import KeyMaterialError, TokenError
from sidecar.keys.loader import parse_jwk, parse_jwks
from sidecar.keys.material import KeyMaterial
from sidecar.keys.ring import KeyRing
from sidecar.tokens.jws import verify_compact
from tests.support.vectors import vectors_dir

VECTORS = vectors_dir()
WYCHEPROOF = VECTORS / "wycheproof" / "testvectors_v1"
COOKBOOK = VECTORS / "jose-cookbook"
SIGNATURE_FILE = "json_web_signature_test.json"
CRYPTO_FILE = "json_web_crypto_test.json"

_WRONG_ALG = "ALGORITHM_NOT_ALLOWED"  # the token's alg is not the algorithm its key is for
_NO_KID = "KEY_UNKNOWN"  # `kid` is required: a token names its key, we never try them all
_EMPTY = "TOKEN_MALFORMED"  # a JWT's payload is a JSON object, never empty (RFC 7519 s7.2)

# Valid-labelled cases a strict JWT verifier refuses, by (file, tcId) -> reason.
EXPECTED_REFUSALS: dict[tuple[str, int], str] = {
    # Empty payload ("header..signature"): our compact form requires three non-empty
    # segments (SECURITY.md check 2), checked before the header: PS ones (272, 320, 325) too.
    **{(SIGNATURE_FILE, tc): _EMPTY for tc in (259, 264, 268, 272, 320, 325)},
    # RFC 7520 figure 20 (PS384) under a group key that says PS256 (vectors/README.md): the
    # key pins the algorithm (RFC 8725 section 3.1), so a PS384 token is refused for it.
    (SIGNATURE_FILE, 346): _WRONG_ALG,
    (SIGNATURE_FILE, 350): _WRONG_ALG,
    # '?' inserted into a segment: valid only for a verifier that drops non-base64url
    # characters (vectors/README.md); strict base64url refuses it.
    (SIGNATURE_FILE, 372): "TOKEN_MALFORMED",
    (SIGNATURE_FILE, 373): "TOKEN_MALFORMED",
}


# Invalid-labelled cases whose token is byte-for-byte the token of a valid-labelled case with
# the same key (-> that tcId). "invalidBase64Padding*" presumably lost its '=' upstream; no
# verifier can both accept the valid twin and refuse these, so they must behave like the twin
# (test_label_conflicts_are_identical_to_their_valid_twin proves the bytes are equal).
LABEL_CONFLICTS: dict[tuple[str, int], int] = {
    (SIGNATURE_FILE, 367): 357,  # invalidBase64Padding
    (SIGNATURE_FILE, 370): 357,  # invalidBase64PaddingInPayload
}


@dataclass(frozen=True)
class Case:
    source: str
    case_id: str
    token: str
    valid: bool
    ring: KeyRing
    comment: str
    key_refused: bool
    expected_payload: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    accepted: bool
    reason: str | None = None  # TokenError.reason when refused
    crash: str | None = None  # the type of any other exception


def _ring(jwk: Mapping[str, Any], alg: str | None = None) -> tuple[KeyRing, bool]:
    """The group's keys, or an empty ring (and True) if loading refuses them."""
    try:
        if "keys" in jwk:
            keys: list[KeyMaterial] = parse_jwks(jwk)
        else:
            keys = [parse_jwk(jwk, alg=alg)]
        signers = [key.kid for key in keys if key.can_sign]
        # A verifier holding several HMAC keys must still name one signer for the ring.
        return KeyRing(keys, signing_kid=signers[0] if len(signers) > 1 else None), False
    except KeyMaterialError:
        return KeyRing([]), True


def _wycheproof(name: str) -> list[Case]:
    path = WYCHEPROOF / name
    if not path.is_file():
        return []
    cases: list[Case] = []
    for group in json.loads(path.read_text(encoding="utf-8"))["testGroups"]:
        # Verify with the public key when there is one: that is what a verifier holds.
        ring, refused = _ring(group.get("public") or group["private"])
        for test in group["tests"]:
            if "jws" not in test:
                continue
            cases.append(
                Case(
                    name,
                    str(test["tcId"]),
                    test["jws"],
                    test["result"] == "valid",
                    ring,
                    test["comment"],
                    refused,
                )
            )
    return cases


# Cookbook expectations: compact outputs that must verify, and documented refusals.
COOKBOOK_COMPACT: dict[str, str | None] = {
    "jws/4_1.rsa_v15_signature.json": None,  # accepted
    "jws/4_2.rsa-pss_signature.json": None,  # PS384
    "jws/4_3.ecdsa_signature.json": None,  # ES512 on P-521
    "jws/4_4.hmac-sha2_integrity_protection.json": None,
    "jws/4_5.signature_with_detached_content.json": _EMPTY,  # detached payload
    "rfc7797/hmac-sha2_b64_false.json": "TOKEN_MALFORMED",  # b64/crit headers refused
    # RFC 8037 A.4 (EdDSA) has no `kid`; its signature is checked in tests/unit/test_eddsa_pss.py.
    "curve25519/jws.json": _NO_KID,
}
COOKBOOK_FILES = sorted(
    ["jws/" + p.name for p in (COOKBOOK / "jws").glob("*.json")]
    + ["rfc7797/" + p.name for p in (COOKBOOK / "rfc7797").glob("*.json")]
    + ["curve25519/jws.json"]
)


def _cookbook() -> list[Case]:
    cases: list[Case] = []
    for name in COOKBOOK_FILES:
        path = COOKBOOK / name
        if not path.is_file():
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        key, alg = doc["input"]["key"], doc["input"]["alg"]
        if isinstance(key, dict) and "kid" not in key:
            key = {**key, "kid": "rfc8037"}  # RFC 8037's key has none; a ring needs one
        ring, refused = _ring(key, alg) if isinstance(key, dict) else (KeyRing([]), True)
        output = doc["output"]
        if "compact" in output:
            payload = doc["input"]["payload"].encode("utf-8")
            cases.append(
                # RFC examples, hence "valid"; COOKBOOK_COMPACT lists the ones we refuse.
                Case(name, "compact", output["compact"], True, ring, doc["title"], refused, payload)
            )
        for form in ("json", "json_flat"):
            if form in output:  # a JWT is compact only (RFC 7519 section 1)
                token = json.dumps(output[form])
                cases.append(Case(name, form, token, False, ring, doc["title"], refused))
    return cases


@functools.cache
def all_cases() -> tuple[Case, ...]:
    return tuple(_wycheproof(SIGNATURE_FILE) + _wycheproof(CRYPTO_FILE) + _cookbook())


def expected_refusal(case: Case) -> str | None:
    if not case.case_id.isdigit():
        return COOKBOOK_COMPACT[case.source] if case.case_id == "compact" else None
    return EXPECTED_REFUSALS.get((case.source, int(case.case_id)))


def run(case: Case) -> Outcome:
    try:
        verified = verify_compact(case.token, case.ring)
    except TokenError as exc:
        return Outcome(False, reason=exc.reason)
    except Exception as exc:  # noqa: BLE001 - counting crashes is the point of this test
        return Outcome(False, crash=type(exc).__name__)
    if case.expected_payload is not None:
        assert verified.payload == case.expected_payload
    return Outcome(True)


def _conflict(case: Case) -> int | None:
    if not case.case_id.isdigit():
        return None
    return LABEL_CONFLICTS.get((case.source, int(case.case_id)))


def test_label_conflicts_are_identical_to_their_valid_twin() -> None:
    by_id = {(c.source, c.case_id): c for c in all_cases()}
    for (source, tc_id), twin_id in LABEL_CONFLICTS.items():
        case, twin = by_id[(source, str(tc_id))], by_id[(source, str(twin_id))]
        assert not case.valid and twin.valid
        assert case.token == twin.token and case.ring is twin.ring


@pytest.mark.parametrize(
    "case", all_cases(), ids=[f"{c.source}-{c.case_id}-{c.comment}" for c in all_cases()]
)
def test_vector(case: Case) -> None:
    outcome = run(case)
    assert outcome.crash is None, f"unexpected {outcome.crash}"
    if _conflict(case) is not None:
        assert outcome.accepted  # exactly as its valid twin
        return
    if not case.valid:
        assert not outcome.accepted, "invalid token accepted"
        return
    expected = expected_refusal(case)
    if expected is None:
        assert outcome.accepted, f"valid token refused with {outcome.reason}"
    else:
        assert (outcome.accepted, outcome.reason) == (False, expected)


def test_vector_files_are_present() -> None:
    """A missing vectors directory fails the suite instead of silently testing nothing."""
    assert WYCHEPROOF.is_dir(), f"missing {WYCHEPROOF}"
    assert (COOKBOOK / "jws").is_dir(), f"missing {COOKBOOK}"
    counts = Counter(case.source for case in all_cases())
    assert counts[SIGNATURE_FILE] == 401
    assert counts[CRYPTO_FILE] == 49
    assert set(COOKBOOK_COMPACT) <= set(COOKBOOK_FILES)


def _summary() -> dict[str, Any]:
    per_file: dict[str, dict[str, Any]] = {}
    for case in all_cases():
        wycheproof = case.source.startswith("json_web")
        source = case.source if wycheproof else "jose-cookbook"
        case_id = case.case_id if wycheproof else f"{case.source}:{case.case_id}"
        entry = per_file.setdefault(
            source,
            {
                "cases": 0,
                "invalid_accepted": [],
                "crashes": [],
                "valid_refused": {},
                "invalid_identical_to_valid_accepted": [],
            },
        )
        outcome = run(case)
        entry["cases"] += 1
        if outcome.crash is not None:
            entry["crashes"].append(case_id)
        elif _conflict(case) is not None and outcome.accepted:
            entry["invalid_identical_to_valid_accepted"].append(case_id)
        elif case.valid and not outcome.accepted:
            label = f"{outcome.reason}{' (key refused at load)' if case.key_refused else ''}"
            entry["valid_refused"].setdefault(label, []).append(case_id)
        elif not case.valid and outcome.accepted:
            entry["invalid_accepted"].append(case_id)
    return per_file


def test_vector_summary() -> None:
    summary = _summary()
    text = json.dumps(summary, indent=1)
    print(text)
    invalid_accepted = sum(len(entry["invalid_accepted"]) for entry in summary.values())
    crashes = sum(len(entry["crashes"]) for entry in summary.values())
    expected_total = len(EXPECTED_REFUSALS) + sum(
        1 for reason in COOKBOOK_COMPACT.values() if reason is not None
    )
    refused_total = sum(
        len(ids) for entry in summary.values() for ids in entry["valid_refused"].values()
    )
    assert (invalid_accepted, crashes, refused_total) == (0, 0, expected_total), text
