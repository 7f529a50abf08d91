"""In-process references, one thread, pre-built keys: what a call costs with no RPC at all.

python-jose and PyJWT decode (the libraries users compare with, where they implement the
algorithm), the raw primitives under them (for every supported algorithm: the floor next to
each figure), the sidecar's own verify (cache off, miss, hit) and signing, and the verify
cache's memory per entry (tracemalloc) against the estimate that bounds it.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jose
import jwt as pyjwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from jose import constants as jose_constants
from jose import jwk as jose_jwk
from jose import jwt as jose_jwt

from bench.tokens import Minted
from sidecar.config import TokenSettings
from sidecar.jwa import ALGORITHMS
from sidecar.tokens.cache import VerifyCache, entry_bytes
from sidecar.tokens.signing import encode_jws

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


# The "cache miss" verifier's cache: smaller than any pool, so every call misses.
MISS_CACHE_ENTRIES = 16
# What the primitives sign: about the length of a token's signing input.
_SIGNING_INPUT = b"x" * 400
_SHA: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
_HMAC_SHA = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


def _jose_decoder(minted: Minted) -> Callable[[], object]:
    token, alg, issuer = minted.tokens[0], minted.alg, minted.issuer
    key = jose_jwk.construct(minted.public_jwk, alg)
    return lambda: jose_jwt.decode(token, key, algorithms=[alg], audience="svc", issuer=issuer)


def _pyjwt_decoder(minted: Minted) -> Callable[[], object]:
    token, alg, issuer = minted.tokens[0], minted.alg, minted.issuer
    key = pyjwt.PyJWK(minted.public_jwk, alg).key
    return lambda: pyjwt.decode(token, key, algorithms=[alg], audience="svc", issuer=issuer)


class Reference(NamedTuple):
    library: str
    algs: frozenset[str]
    decoder: Callable[[Minted], Callable[[], object]]


# The references run only where the library implements the algorithm (python-jose 3.5.0
# has no PS* and no EdDSA): a missing row is said in a note (`reference_gaps`), never faked.
_REFERENCES = {
    "python-jose decode": Reference(
        f"python-jose {jose.__version__}",
        frozenset(jose_constants.ALGORITHMS.SUPPORTED),
        _jose_decoder,
    ),
    "PyJWT decode": Reference(
        f"PyJWT {pyjwt.__version__}",
        frozenset(pyjwt.algorithms.get_default_algorithms()),
        _pyjwt_decoder,
    ),
}


def _decoders(minted: Minted) -> dict[str, Callable[[], object]]:
    return {
        name: ref.decoder(minted) for name, ref in _REFERENCES.items() if minted.alg in ref.algs
    }


def reference_gaps(algs: Iterable[str]) -> list[str]:
    """One note per reference library that lacks some of `algs`: why its rows are absent."""
    notes = []
    for name, ref in _REFERENCES.items():
        missing = [alg for alg in algs if alg not in ref.algs]
        if missing:
            notes.append(
                f"in-process {name}: no rows for {', '.join(missing)} "
                f"({ref.library} does not implement them)"
            )
    return notes


@dataclass(frozen=True)
class Primitive:
    """The `cryptography` (or `hmac`) call under an algorithm's signature, without JOSE
    around it: the floor of that algorithm's verify and sign figures."""

    name: str
    verify: Callable[[], object]
    # None for HMAC: signing is the same MAC as `verify`, already measured.
    sign: Callable[[], object] | None


def _hmac(secret: bytes, alg: str) -> Primitive:
    digest, data = _HMAC_SHA[alg[2:]], _SIGNING_INPUT
    return Primitive(f"HMAC-SHA{alg[2:]}", lambda: hmac.new(secret, data, digest).digest(), None)


def _rsa(key: rsa.RSAPrivateKey, alg: str) -> Primitive:
    """PKCS #1 v1.5 for RS*; for PS* RSASSA-PSS with MGF1 on the same hash and a salt of
    the hash's length (RFC 7518 sections 3.3 and 3.5)."""
    digest, data = _SHA[alg[2:]](), _SIGNING_INPUT
    pad: padding.AsymmetricPadding = padding.PKCS1v15()
    scheme = "RSA"
    if ALGORITHMS[alg].scheme == "PSS":
        pad = padding.PSS(mgf=padding.MGF1(_SHA[alg[2:]]()), salt_length=digest.digest_size)
        scheme = "RSASSA-PSS"
    sig, pub = key.sign(data, pad, digest), key.public_key()
    return Primitive(
        f"{scheme}-{key.key_size} verify",
        lambda: pub.verify(sig, data, pad, digest),
        lambda: key.sign(data, pad, digest),
    )


def _ecdsa(key: ec.EllipticCurvePrivateKey, alg: str, curve: str) -> Primitive:
    """ECDSA with the hash its algorithm names (the curve was checked to match at load)."""
    scheme, data = ec.ECDSA(_SHA[alg[2:]]()), _SIGNING_INPUT
    sig, pub = key.sign(data, scheme), key.public_key()
    return Primitive(
        f"ECDSA {curve} verify",
        lambda: pub.verify(sig, data, scheme),
        lambda: key.sign(data, scheme),
    )


def _ed25519(key: ed25519.Ed25519PrivateKey) -> Primitive:
    data = _SIGNING_INPUT
    sig, pub = key.sign(data), key.public_key()
    return Primitive("Ed25519 verify", lambda: pub.verify(sig, data), lambda: key.sign(data))


def _primitive(minted: Minted) -> Primitive:
    alg, key = minted.alg, minted.crypto_key
    kty = ALGORITHMS[alg].kty
    if kty == "oct":
        return _hmac(key, alg)
    if kty == "RSA":
        return _rsa(key, alg)
    if kty == "EC":
        return _ecdsa(key, alg, minted.jwk["crv"])
    if kty == "OKP":
        return _ed25519(key)
    raise ValueError(f"no raw primitive for {alg!r}")


def measure(minted: Minted, seconds: float, *, cache_hit: bool = True) -> list[Row]:
    """Every in-process row of one algorithm. `cache_hit=False` leaves out the hit, which
    costs the same whatever the algorithm (a digest lookup and the time checks)."""
    rows: list[Row] = []
    alg = minted.alg

    def add(name: str, kind: str, fn: Callable[[], object]) -> None:
        rate = per_second(fn, seconds)
        rows.append(
            {"name": name, "alg": alg, "kind": kind, "per_s": rate, "us_per_call": 1e6 / rate}
        )

    for name, fn in _decoders(minted).items():
        add(name, "reference", fn)
    primitive = _primitive(minted)
    add(primitive.name, "primitive verify", primitive.verify)
    off = minted.service(cache_entries=0)
    pool = minted.tokens
    it = iter(range(1 << 62))
    add("sidecar verify (cache off)", "sidecar", lambda: off.verify(pool[next(it) % len(pool)]))
    small = minted.service(cache_entries=MISS_CACHE_ENTRIES)
    add("sidecar verify (cache miss)", "sidecar", lambda: small.verify(pool[next(it) % len(pool)]))
    if cache_hit:
        warm = minted.service(cache_entries=1024)
        add("sidecar verify (cache hit)", "sidecar", lambda: warm.verify(pool[next(it) % 8]))
    key, claims = minted.signing_key, minted.sample_claims
    add("sidecar sign (encode_jws)", "sidecar", lambda: encode_jws(claims, key, typ="at+jwt"))
    if primitive.sign is not None:
        add(f"raw {alg} sign primitive", "primitive sign", primitive.sign)
    return rows


def cache_cost(minted: Minted, entries: int = 2000) -> Row:
    """Bytes per verify-cache entry (tracemalloc) vs `entry_bytes`, the bound's estimate."""
    settings = TokenSettings(verify_cache_entries=entries * 2)
    service = minted.service(cache_entries=entries * 2, settings=settings)
    tokens = asyncio.run(minted.mint_many(entries))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for token in tokens:  # a token is stored on its second verification
        service.verify(token)
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


# The verify-cache cell (issue 15): what each of the cache's paths costs against no cache.
CACHE_PATHS = (
    ("off", "cache off"),
    ("miss", "miss, first sighting (a one-shot token: not stored)"),
    ("insert", "miss, second sighting (stored)"),
    ("hit", "hit"),
)


def _thread_us(fn: Callable[[str], object], tokens: list[str]) -> float:
    """Thread CPU µs per call of `fn` over `tokens`: other processes on a shared machine
    slow the wall clock, not this thread's CPU time."""
    began = time.thread_time_ns()
    for token in tokens:
        fn(token)
    return (time.thread_time_ns() - began) / len(tokens) / 1000


def cache_paths(minted: Minted, rounds: int) -> list[Row]:
    """Thread CPU per Verify on each path of the sidecar's verify cache, the paths
    interleaved within each round (medians and minimums over rounds).

    Each round takes a fresh cache-off service and a fresh service with the default cache,
    and passes the whole pool (distinct tokens) through: once with the cache off, then
    three times through the cached one, which are every token's first sighting (the miss
    of a one-shot token), its second (the miss that stores it) and a hit.
    """
    pool = minted.tokens
    samples: dict[str, list[float]] = {path: [] for path, _ in CACHE_PATHS}
    for _ in range(rounds):
        gc.collect()
        off = minted.service(cache_entries=0)
        samples["off"].append(_thread_us(off.verify, pool))
        cached = minted.service()
        samples["miss"].append(_thread_us(cached.verify, pool))
        samples["insert"].append(_thread_us(cached.verify, pool))
        samples["hit"].append(_thread_us(cached.verify, pool))
    rows = []
    for path, label in CACHE_PATHS:
        values = sorted(samples[path])
        rows.append(
            {
                "alg": minted.alg,
                "path": path,
                "label": label,
                "tokens": len(pool),
                "rounds": rounds,
                "cpu_us_median": values[len(values) // 2],
                "cpu_us_min": values[0],
            }
        )
    return rows
