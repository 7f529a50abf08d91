"""In-process references, one thread, pre-built keys: what a call costs with no RPC at all.

python-jose and PyJWT decode (the libraries users compare with), the raw primitives under
them, the sidecar's own verify (cache off, miss, hit) and signing, and the verify cache's
memory per entry (tracemalloc) against the estimate that bounds it.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from jose import jwk as jose_jwk
from jose import jwt as jose_jwt

from bench.tokens import Minted
from sidecar.config import TokenSettings
from sidecar.tokens.cache import VerifyCache, entry_bytes
from sidecar.tokens.jws import encode_jws

Row = dict[str, Any]


def per_second(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of `fn` over about `seconds` (after a short warm-up)."""
    for _ in range(20):
        fn()
    n, began = 0, time.perf_counter()
    deadline = began + seconds
    while True:
        for _ in range(50):
            fn()
        n += 50
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - began)


def _decoders(minted: Minted) -> dict[str, Callable[[], object]]:
    token, alg, jwk = minted.tokens[0], minted.alg, minted.public_jwk
    jose_key = jose_jwk.construct(jwk, alg)
    pyjwt_key = pyjwt.PyJWK(jwk, alg).key
    issuer = minted.issuer
    return {
        "python-jose decode": lambda: jose_jwt.decode(
            token, jose_key, algorithms=[alg], audience="svc", issuer=issuer
        ),
        "PyJWT decode": lambda: pyjwt.decode(
            token, pyjwt_key, algorithms=[alg], audience="svc", issuer=issuer
        ),
    }


def _primitive(minted: Minted) -> tuple[str, Callable[[], object]]:
    data, alg, key = b"x" * 400, minted.alg, minted.crypto_key
    if alg == "HS256":
        return "HMAC-SHA256", lambda: hmac.new(key, data, hashlib.sha256).digest()
    if alg == "RS256":
        sig = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        pub = key.public_key()
        return "RSA-2048 verify", lambda: pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
    sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
    pub = key.public_key()
    return "ECDSA P-256 verify", lambda: pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))


def _sign_primitive(minted: Minted) -> Callable[[], object] | None:
    data, alg, key = b"x" * 400, minted.alg, minted.crypto_key
    if alg == "RS256":
        return lambda: key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    if alg == "ES256":
        return lambda: key.sign(data, ec.ECDSA(hashes.SHA256()))
    return None


def measure(minted: Minted, seconds: float) -> list[Row]:
    rows: list[Row] = []
    alg = minted.alg

    def add(name: str, fn: Callable[[], object]) -> None:
        rate = per_second(fn, seconds)
        rows.append({"name": name, "alg": alg, "per_s": rate, "us_per_call": 1e6 / rate})

    for name, fn in _decoders(minted).items():
        add(name, fn)
    add(*_primitive(minted))
    off = minted.service(cache_entries=0)
    pool = minted.tokens
    it = iter(range(1 << 62))
    add("sidecar verify (cache off)", lambda: off.verify(pool[next(it) % len(pool)]))
    small = minted.service(cache_entries=16)
    add("sidecar verify (cache miss)", lambda: small.verify(pool[next(it) % len(pool)]))
    warm = minted.service(cache_entries=1024)
    add("sidecar verify (cache hit)", lambda: warm.verify(pool[next(it) % 8]))
    key, claims = minted.signing_key, minted.sample_claims
    add("sidecar sign (encode_jws)", lambda: encode_jws(claims, key, typ="at+jwt"))
    raw = _sign_primitive(minted)
    if raw is not None:
        add(f"raw {alg} sign primitive", raw)
    return rows


def cache_cost(minted: Minted, entries: int = 2000) -> Row:
    """Bytes per verify-cache entry (tracemalloc) vs `entry_bytes`, the bound's estimate."""
    settings = TokenSettings(verify_cache_entries=entries * 2)
    service = minted.service(cache_entries=entries * 2, settings=settings)
    tokens = asyncio.run(minted.mint_many(entries))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for token in tokens:
        service.verify(token)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    cache: VerifyCache = service.verify_cache
    length = sum(len(t) for t in tokens) / len(tokens)
    return {
        "alg": minted.alg,
        "entries": len(cache),
        "token_chars": round(length),
        "measured_bytes_per_entry": round((after - before) / len(cache)),
        "estimated_bytes_per_entry": entry_bytes(round(length)),
    }
