"""Reference servers, each run as its own process: `python -m bench.servers KIND ...`.

noop    the transport floor: AuthService.Verify answering an empty VerifyResponse at once,
        on the same server stack as the sidecar (grpc.aio, the same options and
        interceptors); `--bare` drops the interceptors; `--sync` runs it on the sync grpc
        server (thread pool, no interceptors: ours are grpc.aio ones) instead.
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
import sys
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from authsidecar.v1 import auth_pb2
from sidecar.transport.interceptors import MetadataLimitInterceptor
from sidecar.transport.metrics import ObservingInterceptor

_OPTIONS = [
    ("grpc.max_receive_message_length", 1 << 20),
    ("grpc.max_metadata_size", 16384 * 2),
    ("grpc.so_reuseport", 0),
]
SERVICE = "authsidecar.v1.AuthService"
_PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def _verify_only(verify: Any) -> grpc.GenericRpcHandler:
    """AuthService with only Verify, exactly as the generated `add_..._to_server` wires it."""
    handler = grpc.unary_unary_rpc_method_handler(
        verify,
        request_deserializer=auth_pb2.VerifyRequest.FromString,
        response_serializer=auth_pb2.VerifyResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Verify": handler})


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


def _interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The sidecar's own interceptors, in its order (transport/server.py), metrics off as in
    the bench sidecars: the floor pays for everything the sidecar's stack does per call."""
    return [ObservingInterceptor(None), MetadataLimitInterceptor(16384)]


def _banner(unix: str, port: int) -> None:
    print(f"bench-server unix={unix} tcp=127.0.0.1:{port} pid={os.getpid()}", flush=True)


async def _serve_aio(verify: Any, unix: str, *, bare: bool = False) -> None:
    interceptors = [] if bare else _interceptors()
    server = grpc.aio.server(interceptors=interceptors, options=_OPTIONS)
    server.add_generic_rpc_handlers((_verify_only(verify),))
    server.add_insecure_port(f"unix:{unix}")
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    _banner(unix, port)
    await stop.wait()
    await server.stop(0)


def _serve_sync(unix: str, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=_OPTIONS)
    server.add_generic_rpc_handlers((_verify_only(_sync_noop),))
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
    from sidecar.transport import servicer

    def json_response(verified: VerifiedToken) -> auth_pb2.VerifyResponse:
        claims = verified.claims
        struct = struct_pb2.Struct()
        json_format.Parse(json.dumps(claims.all), struct)
        return auth_pb2.VerifyResponse(
            **servicer._claim_fields(claims), kid=verified.kid, claims=struct
        )

    servicer._verify_response = json_response
    os.environ["AUTHSIDECAR_TOKENS__VERIFY_CACHE_ENTRIES"] = "0"
    asyncio.run(app.serve(load_settings(None)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    parser.add_argument("kind", choices=["noop", "naive", "legacy"])
    parser.add_argument("--unix", default="")
    parser.add_argument("--sync", action="store_true")
    parser.add_argument("--bare", action="store_true", help="no interceptors (grpc.aio)")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--issuer", default="urn:authsidecar:local")
    args = parser.parse_args(argv)
    if args.kind == "legacy":
        _serve_legacy()
    elif args.kind == "noop" and args.sync:
        _serve_sync(args.unix, args.threads)
    elif args.kind == "noop":
        asyncio.run(_serve_aio(_noop, args.unix, bare=args.bare))
    else:
        jwk = json.loads(args.key.read_text())
        asyncio.run(_serve_aio(_Naive(jwk, args.issuer).Verify, args.unix))
    sys.exit(0)


if __name__ == "__main__":
    main()
