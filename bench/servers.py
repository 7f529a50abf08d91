"""Reference servers, each run as its own process: `python -m bench.servers KIND ...`.

noop    the transport floor: AuthService.Verify answering an empty VerifyResponse at once,
        on the same server stack as the sidecar (grpc.aio, the same options and call
        layers, transport/layers.py); `--bare` drops the layers; `--interceptors` applies
        the same layers through grpc.aio server interceptors, as the sidecar did before
        (what that cost); `--sync` runs it on the sync grpc server (thread pool, no layers:
        ours are grpc.aio ones) instead.
naive   the tutorial sidecar: `jose.jwt.decode(token, jwk, algorithms=[alg], audience=...,
        issuer=...)` per request with the key as a JWK dict, claims into the Struct via JSON.
legacy  the real sidecar as it was before issue 7's changes (claims Struct built through a
        JSON round trip, no verify cache): the "before" of before/after in one run.

Every server prints one banner line: `bench-server unix=PATH tcp=HOST:PORT pid=PID`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from authsidecar.v1 import auth_pb2
from sidecar.transport.layers import LayeredServer, UnaryLayer, metadata_limit
from sidecar.transport.observing import observing

_OPTIONS = [
    ("grpc.max_receive_message_length", 1 << 20),
    ("grpc.max_metadata_size", 16384 * 2),
    ("grpc.so_reuseport", 0),
]
SERVICE = "authsidecar.v1.AuthService"
_PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def _register(server: Any, verify: Any) -> None:
    """AuthService with only Verify, registered exactly as the generated `add_..._to_server`
    does it (generic and registered-method handlers)."""
    handlers = {
        "Verify": grpc.unary_unary_rpc_method_handler(
            verify,
            request_deserializer=auth_pb2.VerifyRequest.FromString,
            response_serializer=auth_pb2.VerifyResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


async def _noop(request: Any, context: Any) -> auth_pb2.VerifyResponse:
    return auth_pb2.VerifyResponse()


def _sync_noop(request: Any, context: Any) -> auth_pb2.VerifyResponse:
    return auth_pb2.VerifyResponse()


class _Naive:
    def __init__(self, jwk: dict[str, Any], issuer: str) -> None:
        from jose import jwt  # python-jose, exactly as the tutorials call it

        self._decode = jwt.decode
        self._jwk = {k: v for k, v in jwk.items() if k not in _PRIVATE_JWK_MEMBERS}
        self._alg = jwk["alg"]
        self._issuer = issuer

    async def Verify(self, request: Any, context: Any) -> auth_pb2.VerifyResponse:
        try:
            claims = self._decode(
                request.token,
                self._jwk,
                algorithms=[self._alg],
                audience=request.audience or "svc",
                issuer=self._issuer,
            )
        except Exception:  # noqa: BLE001 - the tutorial's "any failure is 401"
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        struct = struct_pb2.Struct()
        json_format.Parse(json.dumps(claims), struct)
        aud = claims.get("aud", [])
        return auth_pb2.VerifyResponse(
            sub=claims.get("sub", ""),
            iss=claims.get("iss", ""),
            aud=[aud] if isinstance(aud, str) else aud,
            exp=int(claims.get("exp", 0)),
            jti=claims.get("jti", ""),
            scope=claims.get("scope", ""),
            claims=struct,
        )


_MAX_METADATA = 16384  # the sidecar's default listen.max_metadata_bytes


def _layered(server: grpc.aio.Server) -> LayeredServer:
    """The sidecar's own call layers, as transport/server.py builds them, metrics off as in
    the bench sidecars: the floor pays for everything the sidecar's stack does per call."""
    return LayeredServer(server, max_metadata_bytes=_MAX_METADATA, unary_layers=[observing(None)])


class _LayerInterceptor(grpc.aio.ServerInterceptor):
    """One layer applied through grpc.aio's per-call interceptor API (the handler wrapped once
    per method and cached), exactly as the sidecar's two interceptors did before."""

    def __init__(self, layer: UnaryLayer) -> None:
        self._layer = layer
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.response_streaming:
            return handler
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self._layer(handler.unary_unary, details.method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped


def _banner(unix: str, port: int) -> None:
    print(f"bench-server unix={unix} tcp=127.0.0.1:{port} pid={os.getpid()}", flush=True)


async def _serve_aio(verify: Any, unix: str, *, mode: str = "layers", port: int = 0) -> None:
    """`mode`: "layers" (the sidecar's stack), "bare" or "interceptors" (see the module).
    A non-zero `port` is shared with other processes (SO_REUSEPORT; see `_serve_processes`)."""
    options = _OPTIONS if not port else [*_OPTIONS[:-1], ("grpc.so_reuseport", 1)]
    server: grpc.aio.Server
    if mode == "interceptors":
        layers = [
            _LayerInterceptor(observing(None)),
            _LayerInterceptor(metadata_limit(_MAX_METADATA)),
        ]
        server = grpc.aio.server(interceptors=layers, options=options)
    elif mode == "bare":
        server = grpc.aio.server(options=options)
    else:
        server = _layered(grpc.aio.server(options=options))
    _register(server, verify)
    server.add_insecure_port(f"unix:{unix}")
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    _banner(unix, port)
    await stop.wait()
    await server.stop(0)


def _serve_processes(unix: str, processes: int) -> None:
    """The no-op floor in `processes` processes sharing one TCP port (SO_REUSEPORT: the
    kernel spreads connections over them): what several sidecar processes per pod could
    serve. Measured with h2load over TCP (2 connections); each child has its own socket."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))  # reserves the port (never listens), children share it
    port = holder.getsockname()[1]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.servers", "noop", "--unix", f"{unix}.{i}"]
            + ["--port", str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    for child in children:
        assert child.stdout is not None
        if "bench-server" not in child.stdout.readline():
            raise SystemExit("a child server did not start")
    _banner(f"{unix}.0", port)
    signal.sigwait({signal.SIGTERM})
    for child in children:
        child.terminate()
    for child in children:
        child.wait(timeout=15)
    holder.close()


def _serve_sync(unix: str, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=_OPTIONS)
    _register(server, _sync_noop)
    server.add_insecure_port(f"unix:{unix}")
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    _banner(unix, port)
    signal.sigwait({signal.SIGTERM})
    server.stop(0)


def _serve_legacy() -> None:
    """The sidecar with the pre-issue-7 hot path, configured from AUTHSIDECAR_* as usual."""
    from sidecar import app
    from sidecar.config import load_settings
    from sidecar.tokens.model import VerifiedToken
    from sidecar.transport import responses

    def json_response(verified: VerifiedToken, refusals: Any = None) -> auth_pb2.VerifyResponse:
        claims = verified.claims
        struct = struct_pb2.Struct()
        json_format.Parse(json.dumps(claims.all), struct)
        return auth_pb2.VerifyResponse(
            **responses._claim_fields(claims), kid=verified.kid, claims=struct
        )

    responses.verify_response = json_response
    os.environ["AUTHSIDECAR_TOKENS__VERIFY_CACHE_ENTRIES"] = "0"
    asyncio.run(app.serve(load_settings(None)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=["noop", "naive", "legacy"])
    parser.add_argument("--unix", default="")
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--bare", action="store_true", help="no call layers (grpc.aio)")
    parser.add_argument(
        "--interceptors", action="store_true", help="the layers as grpc.aio interceptors"
    )
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--processes", type=int, default=1, help="no-op on a shared TCP port")
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--issuer", default="urn:authsidecar:local")
    args = parser.parse_args(argv)
    if args.kind == "legacy":
        _serve_legacy()
    elif args.kind == "noop" and args.processes > 1:
        _serve_processes(args.unix, args.processes)
    elif args.kind == "noop" and args.sync:
        _serve_sync(args.unix, args.threads)
    elif args.kind == "noop":
        mode = "bare" if args.bare else "interceptors" if args.interceptors else "layers"
        asyncio.run(_serve_aio(_noop, args.unix, mode=mode, port=args.port))
    else:
        jwk = json.loads(args.key.read_text())
        asyncio.run(_serve_aio(_Naive(jwk, args.issuer).Verify, args.unix))
    sys.exit(0)


if __name__ == "__main__":
    main()
