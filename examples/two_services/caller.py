"""The caller: gets its token from the sidecar and calls the callee (sync gRPC).

    .venv/bin/python examples/two_services/caller.py --admin unix:.authsidecar/admin/admin.sock

The token comes from a renewing source that Issues through the sidecar's admin socket and
renews before expiry; the client interceptor attaches it to every call and retries once,
with a fresh token, if the callee answers UNAUTHENTICATED. Last, the caller shows what a call
without a token gets: the refusal, with the reason the callee's interceptor put in ErrorInfo.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from authsidecar.client import (
    AuthClient,
    BearerClientInterceptor,
    error_reason,
    sidecar_token_source,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callee", default="127.0.0.1:50061")
    parser.add_argument(
        "--admin",
        default="unix:.authsidecar/admin/admin.sock",
        help="the sidecar's admin socket, which alone serves Issue",
    )
    parser.add_argument("--name", default="caller-service", help="the subject to issue for")
    args = parser.parse_args()

    with AuthClient(args.admin) as sidecar:
        source = sidecar_token_source(sidecar, args.name, ["greeter"], scope="greet")
        with grpc.insecure_channel(args.callee) as raw:
            channel = grpc.intercept_channel(raw, BearerClientInterceptor(source))
            hello: grpc.UnaryUnaryMultiCallable[bytes, bytes]
            hello = channel.unary_unary("/demo.Greeter/Hello")
            count: grpc.UnaryStreamMultiCallable[bytes, bytes]
            count = channel.unary_stream("/demo.Greeter/Count")
            anonymous: grpc.UnaryUnaryMultiCallable[bytes, bytes]
            anonymous = raw.unary_unary("/demo.Greeter/Hello")
            print(hello(b"hi", timeout=5).decode())
            for message in count(b"3", timeout=5):
                print(message.decode())
            try:
                anonymous(b"no token", timeout=5)
            except grpc.RpcError as error:
                code = error.code().name if isinstance(error, grpc.Call) else "?"
                print(f"without a token: {code} {error_reason(error)}")
                return 0
    print("without a token: unexpectedly accepted", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
