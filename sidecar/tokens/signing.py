"""Issuing a compact JWS (RFC 7515 section 7.1): the serialisation of what we sign
(`encode_jws`, `jws_signing_input`, `jws_compact`), and where its signature is computed: in
place, or on a small pool of threads. Parsing and verifying is tokens/jws.py's.

pyca/cryptography releases the GIL while it signs, so an RSA signature (~310 µs for 2048 bits
on our bench machine) computed on a worker thread runs on another core while the event loop
serves other calls. Handing a signature over costs the loop ~50 µs (a future, a wake-up
through the loop's self-pipe, a callback; measured), so only keys whose `costly_to_sign` is
true go to the pool; HMAC, P-256 and Ed25519 keys sign in place, where they are cheaper.

Off by default (`tokens.signing_threads: 0`): the pool takes ~35% of an RS256 Issue's CPU off
the event loop's thread, but the process spends ~20% MORE CPU per call (GIL hand-overs,
thread wake-ups), so it only pays with a spare core. On the 2-core bench machine, shared
with the load generator, it did not raise throughput (docs/performance.md).

Several tokens of one call (Refresh's access and refresh token) are split over the threads
that are idle, so they are signed in parallel when there is room, and handed over together
(one hand-off) when the pool is busy: under load the loop's time per hand-off is what limits
throughput, not the latency of one call.

The key is chosen by the caller before the hand-off, and the header naming it is built from
that same key object (`jws_signing_input`). A key-ring swap while a signature is in flight
therefore changes nothing about that token: it names, and is signed by, the key that was the
signing key when the token was minted.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from sidecar.b64url import encode as _b64encode
from sidecar.errors import InvalidRequestError, TokenError
from sidecar.keys.material import KeyMaterial
from sidecar.strict_json import parse_claims

__all__ = [
    "THREAD_NAME_PREFIX",
    "SignJob",
    "Signer",
    "encode_jws",
    "jws_compact",
    "jws_signing_input",
]

THREAD_NAME_PREFIX = "authsidecar-sign"


def _compact_json(value: Mapping[str, Any]) -> bytes:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def encode_jws(claims: Mapping[str, Any], key: KeyMaterial, *, typ: str) -> str:
    """Sign `claims` as a compact JWS.

    The header is always exactly {"alg", "kid", "typ"} from the key and the caller's `typ`:
    no caller-supplied header members, so nothing can override `alg` (unlike
    `jose.jwt.encode(headers=...)`). Claims that are not strict JSON (NaN, lone surrogates,
    duplicate names after conversion, excessive depth, unserialisable values) raise
    `InvalidRequestError`: whatever this returns, `decode_jws` parses (numbers included:
    one outside I-JSON's range is refused here, not issued).
    """
    signing_input = jws_signing_input(claims, key, typ=typ)
    return jws_compact(signing_input, key.sign(signing_input))


def jws_signing_input(claims: Mapping[str, Any], key: KeyMaterial, *, typ: str) -> bytes:
    """`encode_jws` up to the signature: the checked, encoded header and payload.

    The header names `key`; its signature must come from the same `key` (`Signer` computes
    it, possibly on another thread), so the header and the signature cannot name
    different keys even when the key ring is replaced in between.
    """
    if type(typ) is not str or not typ:
        raise ValueError("typ must be a non-empty string")
    header = _encoded_header(key.alg, key.kid, typ)
    try:
        payload = _compact_json(dict(claims))
        # json.dumps turns non-string names into strings (so {1: a, "1": b} would give a
        # duplicate) and nests without limit: re-parse so we only ever issue what we accept.
        parse_claims(payload)
    except (TypeError, ValueError, TokenError):  # UnicodeEncodeError, a claim out of range...
        raise InvalidRequestError("claims are not serialisable as strict JSON") from None
    return header + b"." + _b64encode(payload)


@functools.lru_cache(maxsize=64)
def _encoded_header(alg: str, kid: str, typ: str) -> bytes:
    """The protected header, encoded: a function of its three members alone, and the same
    few (signing key x token type) for every token, so it is built once (Issue, Refresh)."""
    return _b64encode(_compact_json({"alg": alg, "kid": kid, "typ": typ}))


def jws_compact(signing_input: bytes, signature: bytes) -> str:
    """The compact serialisation (RFC 7515 section 7.1) of a signed `jws_signing_input`."""
    return (signing_input + b"." + _b64encode(signature)).decode("ascii")


class SignJob(NamedTuple):
    """One token to sign: its claims, the key chosen for it, and its header `typ`."""

    claims: Mapping[str, Any]
    key: KeyMaterial
    typ: str


def _sign_each(work: Sequence[tuple[KeyMaterial, bytes]]) -> list[bytes]:
    return [key.sign(data) for key, data in work]


class Signer:
    """Signs tokens for `TokenService`; owns the pool (`threads` 0: everything in place).

    `close` stops the threads; it is the owner's (the app's) job to call it once no call is
    in flight. A signature asked for after `close` is computed in place.
    """

    def __init__(self, threads: int = 0) -> None:
        if threads < 0:
            raise ValueError("threads may not be negative")
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        if threads:
            self._pool = ThreadPoolExecutor(threads, thread_name_prefix=THREAD_NAME_PREFIX)
        # Hand-offs submitted and not yet done; only touched on the event loop's thread.
        self._busy = 0

    @property
    def threads(self) -> int:
        return self._threads if self._pool is not None else 0

    async def encode_all(self, jobs: Sequence[SignJob]) -> list[str]:
        """Compact JWSs for `jobs`, in order; raises as `encode_jws` does."""
        inputs = [jws_signing_input(job.claims, job.key, typ=job.typ) for job in jobs]
        costly = [i for i, job in enumerate(jobs) if job.key.costly_to_sign]
        pool = self._pool
        if pool is None or not costly:
            return [
                jws_compact(data, job.key.sign(data))
                for job, data in zip(jobs, inputs, strict=True)
            ]
        loop = asyncio.get_running_loop()
        lanes = min(len(costly), max(1, self._threads - self._busy))
        handed: list[tuple[list[int], asyncio.Future[list[bytes]]]] = []
        for lane in range(lanes):
            indices = costly[lane::lanes]
            work = [(jobs[i].key, inputs[i]) for i in indices]
            future = loop.run_in_executor(pool, _sign_each, work)
            self._busy += 1
            future.add_done_callback(self._done)
            handed.append((indices, future))
        signatures: dict[int, bytes] = {}
        try:
            # Cheap signatures are computed here while the costly ones run on the pool.
            offloaded = set(costly)
            for i, job in enumerate(jobs):
                if i not in offloaded:
                    signatures[i] = job.key.sign(inputs[i])
            for indices, future in handed:
                signatures.update(zip(indices, await future, strict=True))
        finally:
            for _, future in handed:
                if not future.done():
                    future.cancel()  # this call failed or was cancelled: drop the result
                elif not future.cancelled():
                    future.exception()  # retrieved, so a second failure is not logged
        return [jws_compact(data, signatures[i]) for i, data in enumerate(inputs)]

    def _done(self, _future: asyncio.Future[list[bytes]]) -> None:
        self._busy -= 1

    def close(self) -> None:
        """Stop the threads, after the signatures they are computing (milliseconds at most)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
