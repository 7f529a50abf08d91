"""The callee of the two-service benchmark (issue 15): `python -m bench.callee AUTH ...`.

A grpc.aio service with one trivial unary method, `/bench.Callee/Call` (bytes in, `ok` out),
on a plain `grpc.aio.server(interceptors=...)` as a user's service would be, behind one of
four kinds of authentication (the columns of bench/two_service.py):

  none     no authentication: the floor. The caller still sends its bearer token.
  pyjwt    what the usual JWT tutorials teach: an interceptor reads `authorization: Bearer`
           and calls `jwt.decode(token, key, algorithms=[alg], audience=..., issuer=...,
           options={"require": ["exp", "iss", "aud"]})` with the public key object built
           once at start; any failure is UNAUTHENTICATED. Claims reach the handler through a
           ContextVar. No revocation, no key rotation.
  verify   `AsyncAuthServerInterceptor(client, cache_decisions=False,
           coalesce_misses=False)`: the sidecar's Verify for every call.
  default  `AsyncAuthServerInterceptor(client)`: the interceptor's defaults (issue 15:
           decisions cached, dropped by the sidecar's Watch events, misses coalesced into
           VerifyBatch).

Two diagnostic kinds split an interceptor's cost (what the bench's "where the CPU goes" rows
compare): `passthrough`, an interceptor whose `intercept_service` only awaits the
continuation (grpc.aio's interceptor path alone), and `wrapping`, which also replaces the
handler's behaviour with a per-call coroutine around it, as the auth interceptors do, but
checks nothing. Two more split the default interceptor's (bench/oneshot_ab.py runs them
beside it): `watching`, `passthrough` in a process where a default interceptor is built,
its client's channel open and its Watch stream followed, but never called (what the stream
costs the process), and `nobatch`, the default with `coalesce_misses=False` (no batcher,
no VerifyStream open beside the Watch).

`--time-intercept` wraps each server's interceptor in `Timed`: the thread CPU of every
`intercept_service`, read (and cleared) through the control server's `InterceptTimes`.

`--servers N` runs N servers in this one process, each with its own interceptor and its own
`AsyncAuthClient` (its own channel, hence its own Watch subscription): server i listens on
`unix:PREFIX.i` and on a loopback TCP port. Banner (bench/procs.py reads it):
`bench-server unix=PREFIX.0 tcp=127.0.0.1:PORT0 pid=PID`.

A separate control server without interceptors, on `unix:PREFIX.control`, answers
`/bench.CalleeControl/Stats` with the JSON list of each interceptor's `stats()` (issue 15's
`DecisionStats`: hits, misses, bypassed, invalidations, ...; `{}` where there is none), so
the bench can show that column (4) really served hits, without touching the measured path;
and `/bench.CalleeControl/Dropped` (request: a jti) with the times, on CLOCK_MONOTONIC
(`time.monotonic`, one clock for every process on the host), at which each interceptor of
this process applied the Watch event revoking that token (from then on it serves no
decision about it): the push delay measured where it ends, with no polling in it
(bench/propagation.py). The times are taken by wrapping the client's private
`DecisionCache.revoke_token`, which the watcher calls once per event whether or not it held
a decision: bench instrumentation only (bench/callee_times.py, as the refusal times below).

With `--time-refusals` (the propagation bench's callees only: the throughput cells never pay
for it), `/bench.CalleeControl/Refused` (request: a jti) answers, on the same clock, when
each server of this process first refused a call bearing that token: the moment its
interceptor's `intercept_service` returned a handler that refuses instead of the service's
own (for `default`, a refusal kept from the Watch event; for `verify`, Verify's answer). That
is the refusal where it happens, before the UNAUTHENTICATED status is written back: the
prober's own time adds the reply's trip back and the prober's queue. One list entry per
server that refused, in no order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import dataclasses
import inspect
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import jwt

from authsidecar.client import AsyncAuthClient, AsyncAuthServerInterceptor, AuthPolicy
from bench import callee_times

SERVICE = "bench.Callee"
METHOD = f"/{SERVICE}/Call"
CONTROL = "bench.CalleeControl"
STATS = f"/{CONTROL}/Stats"
DROPPED = f"/{CONTROL}/Dropped"
REFUSED = f"/{CONTROL}/Refused"
INTERCEPT_TIMES = f"/{CONTROL}/InterceptTimes"
KINDS = ("none", "pyjwt", "verify", "default", "passthrough", "wrapping", "watching", "nobatch")
# The callee verifying in-process holds only the public half of an asymmetric key.
_PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}

_claims: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "bench_callee_claims", default=None
)


async def _call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return b"ok"


def _identity(value: bytes) -> bytes:
    return value


def ask(control: str, method: str) -> Any:
    """What a callee's control server (at `control`) answers `method` (STATS, INTERCEPT_TIMES,
    ...) with: its JSON, decoded."""
    with grpc.insecure_channel(control) as channel:
        raw: bytes = channel.unary_unary(method, _identity, _identity)(b"", timeout=10)
    return json.loads(raw)


async def _deny(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
    raise AssertionError("abort returned")  # pragma: no cover


_DENY: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_deny)


class PyJwtInterceptor(grpc.aio.ServerInterceptor):
    """The tutorial interceptor: decode in `intercept_service`, a pre-built abort handler on
    failure (grpc's examples/python/auth shape), claims into a ContextVar for the handler."""

    def __init__(self, jwk: dict[str, Any], audience: str, issuer: str) -> None:
        self._alg = jwk["alg"]
        public = {k: v for k, v in jwk.items() if k not in _PRIVATE_JWK_MEMBERS}
        self._key = jwt.PyJWK(public, self._alg).key  # built once: no per-call key parsing
        self._audience = audience
        self._issuer = issuer

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        token = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[7:]
        if token is None:
            return _DENY
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._alg],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError:
            return _DENY
        _claims.set(claims)
        return await continuation(handler_call_details)


class PassThrough(grpc.aio.ServerInterceptor):
    """Diagnostic: grpc.aio's interceptor path and nothing else (`idle`: an object kept
    alive beside it, e.g. a default interceptor whose Watch stream runs, never called)."""

    def __init__(self, idle: Any = None) -> None:
        self.idle = idle

    async def aclose(self) -> None:
        if self.idle is not None:
            await self.idle.aclose()

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        return await continuation(handler_call_details)


class Wrapping(grpc.aio.ServerInterceptor):
    """Diagnostic: the auth interceptors' shape without their check: the handler rebuilt
    with a per-call coroutine that awaits the original behaviour."""

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        handler = await continuation(handler_call_details)
        inner = handler.unary_unary

        async def single(request: bytes, context: Any) -> Any:
            return await inner(request, context)

        return handler._replace(unary_unary=single)


class Timed(grpc.aio.ServerInterceptor):
    """Diagnostic (`--time-intercept`): the thread CPU of each call's `intercept_service` in
    the interceptor it wraps, as grpc.aio really calls it (caches as a served call leaves
    them, not as a loop over one call warms them: bench/hit_cost.py). A call that awaits
    (a miss) is charged whatever else ran on the thread meanwhile: read the median, which is
    a hit's when the cell's calls are hits."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ns: list[int] = []

    async def intercept_service(
        self, continuation: Any, handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        start = time.thread_time_ns()
        handler = await self.inner.intercept_service(continuation, handler_call_details)
        self.ns.append(time.thread_time_ns() - start)
        return handler

    def stats(self) -> Any:
        return self.inner.stats() if hasattr(self.inner, "stats") else None

    async def aclose(self) -> None:
        await _close(self.inner, None)

    def take(self) -> dict[str, float]:
        """Count, median, mean and 90th percentile (µs) since the last `take`; cleared."""
        ns, self.ns = sorted(self.ns), []
        if not ns:
            return {"count": 0}
        return {
            "count": len(ns),
            "median_us": statistics.median(ns) / 1000,
            "mean_us": statistics.fmean(ns) / 1000,
            "p90_us": ns[len(ns) * 9 // 10] / 1000,
        }


def _interceptor(kind: str, args: argparse.Namespace) -> tuple[Any, AsyncAuthClient | None]:
    if kind == "none":
        return None, None
    if kind == "passthrough":
        return PassThrough(), None
    if kind == "wrapping":
        return Wrapping(), None
    if kind == "watching":
        # The default interceptor built (its client, channel and Watch stream live in the
        # process) but not in the server's chain: the calls see only `PassThrough`.
        watched = AsyncAuthClient(args.sidecar)
        return PassThrough(AsyncAuthServerInterceptor(watched, AuthPolicy())), watched
    if kind == "pyjwt":
        jwk = json.loads(Path(args.key).read_text())
        return PyJwtInterceptor(jwk, args.audience, args.issuer), None
    client = AsyncAuthClient(args.sidecar)
    policy = AuthPolicy(audience=args.audience)
    if kind == "verify":
        plain = AsyncAuthServerInterceptor(
            client, policy, cache_decisions=False, coalesce_misses=False
        )
        return plain, client
    if kind == "nobatch":
        return AsyncAuthServerInterceptor(client, policy, coalesce_misses=False), client
    return AsyncAuthServerInterceptor(client, policy), client


async def _close(interceptor: Any, client: AsyncAuthClient | None) -> None:
    """Close whatever the interceptor holds open (a Watch subscription), then its client."""
    close = getattr(interceptor, "close", None) or getattr(interceptor, "aclose", None)
    if close is not None:
        result = close()
        if inspect.isawaitable(result):
            await result
    if client is not None:
        await client.close()


def _stats(interceptor: Any) -> dict[str, Any]:
    stats = getattr(interceptor, "stats", None)
    if stats is None:
        return {}
    snapshot = stats()
    if not dataclasses.is_dataclass(snapshot):
        return {}
    # Not dataclasses.asdict: it deep-copies, and a mappingproxy field cannot be copied.
    fields = {f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot)}
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in fields.items()}


async def _control(prefix: str, interceptors: list[Any]) -> grpc.aio.Server:
    async def stats(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return json.dumps([_stats(i) for i in interceptors]).encode()

    async def dropped(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return json.dumps(callee_times.DROPPED_AT.get(request.decode(), [])).encode()

    async def refused(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return json.dumps(list(callee_times.REFUSED_AT.get(request.decode(), {}).values())).encode()

    async def intercept_times(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        return json.dumps([i.take() if isinstance(i, Timed) else {} for i in interceptors]).encode()

    handlers = {
        "Stats": grpc.unary_unary_rpc_method_handler(stats, _identity, _identity),
        "Dropped": grpc.unary_unary_rpc_method_handler(dropped, _identity, _identity),
        "Refused": grpc.unary_unary_rpc_method_handler(refused, _identity, _identity),
        "InterceptTimes": grpc.unary_unary_rpc_method_handler(
            intercept_times, _identity, _identity
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(CONTROL, handlers),))
    server.add_insecure_port(f"unix:{prefix}.control")
    await server.start()
    return server


async def serve(args: argparse.Namespace) -> None:
    callee_times.record_drops()
    handlers = {"Call": grpc.unary_unary_rpc_method_handler(_call, _identity, _identity)}
    generic = grpc.method_handlers_generic_handler(SERVICE, handlers)
    servers: list[tuple[grpc.aio.Server, Any, AsyncAuthClient | None]] = []
    ports = []
    for i in range(args.servers):
        interceptor, client = _interceptor(args.kind, args)
        if args.time_refusals and interceptor is not None:
            callee_times.time_refusals(interceptor, i, own=_call)
        if args.time_intercept and interceptor is not None:
            interceptor = Timed(interceptor)
        server = grpc.aio.server(interceptors=[interceptor] if interceptor is not None else None)
        server.add_generic_rpc_handlers((generic,))
        server.add_insecure_port(f"unix:{args.unix}.{i}")
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append((server, interceptor, client))
    control = await _control(args.unix, [interceptor for _, interceptor, _ in servers])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"bench-server unix={args.unix}.0 tcp=127.0.0.1:{ports[0]} pid={os.getpid()}", flush=True)
    await stop.wait()
    await control.stop(0)
    for server, interceptor, client in servers:
        await server.stop(0)
        await _close(interceptor, client)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.callee")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--unix", required=True, help="socket path prefix: PREFIX.i")
    parser.add_argument("--servers", type=int, default=1)
    parser.add_argument("--sidecar", default="", help="the sidecar, unix:PATH (verify, default)")
    parser.add_argument("--key", default="", help="the JWK file (pyjwt)")
    parser.add_argument("--audience", default="svc")
    parser.add_argument("--issuer", default="urn:authsidecar:local")
    parser.add_argument(
        "--time-refusals", action="store_true", help="time each token's first refusal"
    )
    parser.add_argument(
        "--time-intercept",
        action="store_true",
        help="thread CPU of each intercept_service (control: InterceptTimes)",
    )
    asyncio.run(serve(parser.parse_args(argv)))
    sys.exit(0)


if __name__ == "__main__":
    main()
