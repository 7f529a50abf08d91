"""What a decision-cache hit costs in-process: `python -m bench.hit_cost`.

    .venv/bin/python -m bench.hit_cost            # this tree's client library
    PYTHONPATH=/tmp/hitbase/clients/python .venv/bin/python -m bench.hit_cost   # another's

Starts a real sidecar (bench key, memory store), builds `AsyncAuthServerInterceptor` on an
`AsyncAuthClient` to it, waits for its Watch stream to be current, and sends each of 100
tokens through `intercept_service` once (a real Verify fills the cache). Then, in rounds,
times `intercept_service` on hits (a unary handler, the continuation a coroutine returning
it, as grpc.aio's is) and the pieces a hit is made of, µs per call of process CPU and wall
time, medians of the rounds. It also checks that a hit completes in one step of its
coroutine: it never yields to the event loop.

A loop over one call keeps every cache of the CPU warm, so these are the floor of a hit;
served by grpc.aio, each call starts colder and the same code costs 3-4x more (bench/callee.py
`--time-intercept` measures it there).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from authsidecar.client import (
    AsyncAuthClient,
    AsyncAuthServerInterceptor,
    AuthClient,
    AuthPolicy,
    AuthServerInterceptor,
    current_claims,
)
from authsidecar.client._context import bind_claims
from authsidecar.client._decisions import decision_key
from authsidecar.client._models import VerifiedClaims
from authsidecar.client._refusal import bearer_token
from bench import two_service
from bench.tokens import AUDIENCE, make_key

METHOD = "/bench.Callee/Call"


async def _call(request: bytes, context: Any) -> bytes:
    return b"ok"


HANDLER: Any = grpc.unary_unary_rpc_method_handler(_call)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


async def _continuation(details: grpc.HandlerCallDetails) -> Any:
    return HANDLER


def _step(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that must not yield; its result."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise AssertionError("a hit yielded to the event loop")


def _timed(work: Callable[[int], object], n: int) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    work(n)
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


async def _measure(target: str, tokens: list[str], n: int, rounds: int) -> None:
    client = AsyncAuthClient(target)
    interceptor = AsyncAuthServerInterceptor(client, AuthPolicy(audience=AUDIENCE))
    try:
        for _ in range(200):
            if interceptor.stats().current:
                break
            await asyncio.sleep(0.05)
        details = [_Details(METHOD, (("authorization", f"Bearer {t}"),)) for t in tokens]
        for d in details:
            await interceptor.intercept_service(_continuation, d)
        assert interceptor.stats().misses == len(tokens), interceptor.stats()
        assert _step(interceptor.intercept_service(_continuation, details[0])) is HANDLER
        gate = interceptor._gate
        state = gate.state
        assert state is not None
        rule = gate.policy.rule(METHOD)
        key = decision_key(tokens[0], AUDIENCE, rule.scopes)
        claims = state.consult(key, time.time())[0]
        assert isinstance(claims, VerifiedClaims)
        metadata = details[0].invocation_metadata
        intercept = interceptor.intercept_service

        def hits(count: int) -> None:
            for i in range(count):
                _step(intercept(_continuation, details[i % len(details)]))

        def continuation_only(count: int) -> None:
            for i in range(count):
                _step(_continuation(details[i % len(details)]))

        parts: dict[str, Callable[[int], object]] = {
            "intercept_service, hit (all included)": hits,
            "  the continuation alone (grpc's)": continuation_only,
            "  bearer_token(metadata)": lambda k: [bearer_token(metadata) for _ in range(k)],
            "  policy.rule(method), unremembered": lambda k: [
                gate.policy.rule(METHOD) for _ in range(k)
            ],
            "  decision_key (SHA-256, sorted scopes)": lambda k: [
                decision_key(tokens[0], AUDIENCE, rule.scopes) for _ in range(k)
            ],
            "  WatchState.consult (lock, current, get)": lambda k: [
                state.consult(key, time.time()) for _ in range(k)
            ],
            "  bind_claims": lambda k: [bind_claims(claims) for _ in range(k)],  # type: ignore[func-returns-value]
        }
        if hasattr(gate, "rule"):  # the memo this branch added
            parts["  Gate.rule(method), remembered"] = lambda k: [
                gate.rule(METHOD) for _ in range(k)
            ]
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in parts}
        for _ in range(rounds):
            for name, work in parts.items():
                results[name].append(_timed(work, n))
        for name, values in results.items():
            cpu = statistics.median(v[0] for v in values)
            wall = statistics.median(v[1] for v in values)
            print(f"{name:44s} cpu {cpu:6.2f} us  wall {wall:6.2f} us")
        print(f"hits counted by stats(): {interceptor.stats().hits}")
    finally:
        await interceptor.aclose()
        await client.close()


def _sync_call(request: bytes, context: Any) -> bytes:
    assert current_claims() is not None
    return b"ok"


def _measure_sync(target: str, tokens: list[str], n: int, rounds: int) -> None:
    """The sync interceptor's hit: `intercept_service` (on grpc's dispatch thread) plus the
    wrapped behaviour it returns (on a worker thread), here both on this thread."""
    handler: Any = grpc.unary_unary_rpc_method_handler(_sync_call)
    client = AuthClient(target)
    interceptor = AuthServerInterceptor(client, AuthPolicy(audience=AUDIENCE))
    try:
        for _ in range(200):
            if interceptor.stats().current:
                break
            time.sleep(0.05)
        details = [_Details(METHOD, (("authorization", f"Bearer {t}"),)) for t in tokens]

        def calls(count: int) -> None:
            for i in range(count):
                wrapped: Any = interceptor.intercept_service(
                    lambda _: handler, details[i % len(details)]
                )
                wrapped.unary_unary(b"", None)  # the context is used only to abort

        calls(len(details))  # the misses: Verify fills the cache
        assert interceptor.stats().misses == len(tokens), interceptor.stats()
        values = [_timed(calls, n) for _ in range(rounds)]
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        name = "sync: intercept_service + wrapped handler"
        print(f"{name:44s} cpu {cpu:6.2f} us  wall {wall:6.2f} us")
    finally:
        interceptor.close()
        client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hit_cost", description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round and part")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="asb-hit-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        minted = make_key(workdir, two_service.ALG, 0)
        tokens = two_service.Minter(minted).mint(100)
        sidecar = two_service.start_sidecar(workdir, minted, "sidecar")
        try:
            asyncio.run(_measure(sidecar.target("uds"), tokens, args.calls, args.rounds))
            _measure_sync(sidecar.target("uds"), tokens, args.calls, args.rounds)
        finally:
            sidecar.stop()


if __name__ == "__main__":
    main()
