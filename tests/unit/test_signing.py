"""Signing off the event loop (tokens/signing.py) changes where a signature is computed, never
what is signed: same tokens, same key per token even across a ring swap, same errors."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sidecar.clock import FixedClock
from sidecar.config import TokenSettings
from sidecar.errors import InvalidRequestError, KeyMaterialError
from sidecar.keys.material import KeyMaterial, asymmetric_key
from sidecar.keys.ring import KeyRing
from sidecar.store.memory import MemoryTokenStore
from sidecar.tokens.jws import decode_jws
from sidecar.tokens.service import TokenService
from sidecar.tokens.signing import THREAD_NAME_PREFIX, Signer, SignJob, encode_jws
from tests.support.keys import make_key, private_key


async def _encode(signer: Signer, claims: Any, key: KeyMaterial, *, typ: str) -> str:
    (token,) = await signer.encode_all((SignJob(claims, key, typ),))
    return token


NOW = 1_800_000_000
ISSUER = "urn:authsidecar:test"
CLAIMS = {"iss": ISSUER, "sub": "alice", "aud": ["orders"], "exp": NOW + 60, "jti": "j"}


class _Ring:
    """Exact lookup by kid over a fixed set of keys (what decode_jws needs)."""

    def __init__(self, *keys: KeyMaterial) -> None:
        self._keys = {key.kid: key for key in keys}

    def get(self, kid: str) -> KeyMaterial | None:
        return self._keys.get(kid)


def _header(token: str) -> dict[str, Any]:
    segment = token.split(".")[0]
    header: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return header


def _our_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)}


@pytest.fixture
def signer() -> Iterator[Signer]:
    signer = Signer(2)
    yield signer
    signer.close()


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES384", "ES512"])
def test_costly_keys_are_rsa_and_the_big_curves(alg: str) -> None:
    assert make_key(alg, "costly").costly_to_sign


@pytest.mark.parametrize("alg", ["HS256", "ES256", "EdDSA"])
def test_cheap_keys_sign_in_place(alg: str) -> None:
    assert not make_key(alg, "cheap").costly_to_sign


def test_a_verification_only_key_is_never_costly_to_sign() -> None:
    rsa_private = private_key("RS256", "public-only")
    public = asymmetric_key(rsa_private.public_key(), "RS256", "public-only")  # type: ignore[union-attr]
    assert not public.costly_to_sign


def test_negative_threads_are_refused() -> None:
    with pytest.raises(ValueError):
        Signer(-1)


@pytest.mark.parametrize("threads", [0, 2])
async def test_rs256_tokens_are_byte_identical_to_encode_jws(threads: int) -> None:
    # PKCS#1 v1.5 signatures are deterministic: any difference in header, payload or key
    # would show in the bytes.
    key = make_key("RS256", "det")
    signer = Signer(threads)
    try:
        token = await _encode(signer, CLAIMS, key, typ="at+jwt")
    finally:
        signer.close()
    assert token == encode_jws(CLAIMS, key, typ="at+jwt")


async def test_costly_signatures_run_on_the_pool_threads(signer: Signer) -> None:
    before = _our_threads()
    token = await _encode(signer, CLAIMS, make_key("RS256", "pool"), typ="at+jwt")
    assert _our_threads() - before, "an RS256 signature did not go to the pool"
    assert decode_jws(token, _Ring(make_key("RS256", "pool"))).claims == CLAIMS


async def test_cheap_signatures_never_start_a_thread(signer: Signer) -> None:
    before = _our_threads()
    for alg in ("HS256", "ES256", "EdDSA"):
        key = make_key(alg, "inline")
        token = await _encode(signer, CLAIMS, key, typ="at+jwt")
        assert decode_jws(token, _Ring(key)).claims == CLAIMS
    assert not _our_threads() - before


async def test_close_stops_the_threads_and_later_signatures_run_in_place() -> None:
    signer = Signer(2)
    key = make_key("RS256", "close")
    before = _our_threads()
    await asyncio.gather(*(_encode(signer, CLAIMS, key, typ="at+jwt") for _ in range(4)))
    started = _our_threads() - before
    assert started
    signer.close()
    assert not any(thread.is_alive() for thread in started)
    assert signer.threads == 0
    token = await _encode(signer, CLAIMS, key, typ="at+jwt")
    assert token == encode_jws(CLAIMS, key, typ="at+jwt")
    assert _our_threads() - before == set()


async def test_many_concurrent_signatures_are_each_correct(signer: Signer) -> None:
    keys = [make_key(alg, f"many-{alg}") for alg in ("RS256", "ES256", "PS256", "ES384", "HS256")]
    jobs = [SignJob({**CLAIMS, "jti": f"j{i}"}, keys[i % len(keys)], "at+jwt") for i in range(60)]
    tokens = await asyncio.gather(*(_encode(signer, j.claims, j.key, typ=j.typ) for j in jobs))
    ring = _Ring(*keys)
    for job, token in zip(jobs, tokens, strict=True):
        verified = decode_jws(token, ring)
        assert verified.key is job.key
        assert verified.claims == job.claims


async def test_encode_all_keeps_the_order_of_mixed_keys(signer: Signer) -> None:
    keys = [make_key(alg, f"order-{alg}") for alg in ("ES256", "RS256", "HS256", "RS384", "ES512")]
    jobs = [SignJob({**CLAIMS, "n": i}, key, "at+jwt") for i, key in enumerate(keys)]
    tokens = await signer.encode_all(jobs)
    ring = _Ring(*keys)
    assert [decode_jws(t, ring).claims["n"] for t in tokens] == list(range(len(keys)))
    assert [_header(t)["kid"] for t in tokens] == [key.kid for key in keys]


async def test_claims_that_are_not_strict_json_are_refused_before_any_hand_off(
    signer: Signer,
) -> None:
    before = _our_threads()
    with pytest.raises(InvalidRequestError):
        await _encode(signer, {**CLAIMS, "x": math.nan}, make_key("RS256", "nan"), typ="at+jwt")
    assert not _our_threads() - before


async def test_a_verification_only_key_is_refused_beside_pooled_signatures(
    signer: Signer,
) -> None:
    rsa_private = private_key("RS256", "verify-only")
    public = asymmetric_key(rsa_private.public_key(), "RS256", "verify-only")  # type: ignore[union-attr]
    with pytest.raises(KeyMaterialError):
        await _encode(signer, CLAIMS, public, typ="at+jwt")
    # Mixed with a costly key that the pool signs: the error still surfaces, nothing hangs.
    jobs = [SignJob(CLAIMS, make_key("RS256", "ok"), "at+jwt"), SignJob(CLAIMS, public, "at+jwt")]
    with pytest.raises(KeyMaterialError):
        await signer.encode_all(jobs)


def _service(ring: KeyRing, signer: Signer) -> TokenService:
    return TokenService(
        ring=ring,
        store=MemoryTokenStore(),
        settings=TokenSettings(issuer=ISSUER, default_audience=("orders",)).options(),
        clock=FixedClock(float(NOW)),
        signer=signer,
    )


async def test_a_ring_swap_mid_flight_keeps_each_tokens_key() -> None:
    old, new = make_key("RS256", "old"), make_key("RS256", "new")
    signer = Signer(1)
    service = _service(KeyRing([old]), signer)
    try:
        first = [asyncio.create_task(service.issue(subject=f"a{i}")) for i in range(6)]
        await asyncio.sleep(0)  # each has chosen its key and handed its signature over
        assert not any(task.done() for task in first)
        service.replace_ring(KeyRing([new]))
        second = [asyncio.create_task(service.issue(subject=f"b{i}")) for i in range(6)]
        grants = await asyncio.gather(*first, *second)
    finally:
        signer.close()
    both = KeyRing([old, new], signing_kid="new")
    kids = []
    for grant in grants:
        # decode_jws checks the signature with the key the header names.
        kids.append(decode_jws(grant.access_token, both).key.kid)
    assert kids == ["old"] * 6 + ["new"] * 6


async def test_refresh_signs_both_tokens_on_the_pool_and_they_chain() -> None:
    key = make_key("RS256", "refresh")
    signer = Signer(2)
    service = _service(KeyRing([key]), signer)
    try:
        grant = await service.issue(subject="alice", scope="read", refresh_token=True)
        for _ in range(3):
            grant = await service.refresh(grant.refresh_token)
            access = service.verify(grant.access_token, audience="orders")
            refresh = decode_jws(grant.refresh_token, KeyRing([key])).claims
            assert access.claims.sid == refresh["sid"]
            assert _header(grant.refresh_token)["typ"] != _header(grant.access_token)["typ"]
    finally:
        signer.close()
