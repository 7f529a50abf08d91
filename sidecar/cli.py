"""`authsidecar`: serve, generate keys, and issue / verify / inspect tokens from a shell.

Every failure an operator can cause (bad config, bad key file, sidecar not running, token
refused) ends in one line on stderr and a non-zero exit status, never a traceback:
exit 1 = the token was refused or a call failed, exit 2 = usage or configuration error.

`--config FILE` is accepted before or after the subcommand (`authsidecar serve --config f`).
The commands that call a sidecar (`token issue|verify`, `health`) find it as
`sidecar/cli_client.py` says: `--target`, the environment, the configuration; never the
current directory by guess. The `keys` subcommands (key files and the rotation runbook) are
sidecar/cli_keys.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from sidecar import app
from sidecar.allocator import fix_mmap_threshold
from sidecar.cli_client import (
    ADDR_ENV,
    ADMIN_ADDR_ENV,
    UnreachableError,
    admin_target,
    describe_failure,
    public_target,
    reply_as_json,
)
from sidecar.cli_keys import add_keys_commands, run_keys_command
from sidecar.config import Settings, load_settings
from sidecar.errors import AuthSidecarError, StartupError
from sidecar.logs import close_output, configure_logging
from sidecar.tokens.jws import peek

EXIT_REFUSED = 1
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
EXIT_USAGE = 2
_CONFIG_HELP = "YAML or TOML settings file (default: $AUTHSIDECAR_CONFIG, else built-in defaults)"
_TARGET_HELP = (
    f"sidecar address, unix:/path or host:port (default: ${ADDR_ENV}, else the configured "
    "public socket if it exists, else the configured TCP address)"
)


def _add_config(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given after the subcommand it wins, absent it leaves the top-level value.
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=_CONFIG_HELP)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authsidecar", description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE", default=None, help=_CONFIG_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the sidecar until SIGTERM",
        description="Run the sidecar until SIGTERM or SIGINT, then drain. Settings: defaults, "
        "then --config FILE, then AUTHSIDECAR_<SECTION>__<NAME> environment variables.",
    )
    _add_config(serve)
    # For HEALTHCHECK and exec probes: exit 0 when SERVING, 1 otherwise (grpc.health.v1).
    health = commands.add_parser("health", help="ask a running sidecar whether it is SERVING")
    _add_config(health)
    health.add_argument("--target", help=_TARGET_HELP)
    health.add_argument("--service", default="", help="health service name (default: server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")

    add_keys_commands(commands, _add_config)

    token = commands.add_parser("token", help="debug tokens").add_subparsers(
        dest="debug_action", required=True
    )
    issue = token.add_parser("issue", help="mint a token through the admin socket")
    _add_config(issue)
    issue.add_argument("--sub", required=True, help="subject")
    issue.add_argument("--aud", action="append", default=[], help="audience (repeatable)")
    issue.add_argument("--scope", default="", help="space-delimited scope")
    issue.add_argument("--claims", default="{}", help="extra claims as a JSON object")
    issue.add_argument("--client-id", default="")
    issue.add_argument("--ttl", type=int, default=0, help="lifetime in seconds (0: default)")
    issue.add_argument("--refresh", action="store_true", help="also issue a refresh token")
    issue.add_argument(
        "--target",
        help=f"admin socket, unix:/path (default: ${ADMIN_ADDR_ENV}, else the configured "
        "admin socket)",
    )
    issue.add_argument(
        "--output",
        choices=("json", "token"),
        default="json",
        help="json: the whole reply (default); token: the access token alone, for "
        "TOKEN=$(authsidecar token issue ... --output token)",
    )

    verify = token.add_parser("verify", help="ask the sidecar to verify an access token")
    _add_config(verify)
    verify.add_argument("token", help="the token, or - to read it from stdin")
    verify.add_argument("--audience", default="")
    verify.add_argument("--scope", action="append", default=[], help="required scope (repeatable)")
    verify.add_argument("--target", help=_TARGET_HELP)

    inspect = token.add_parser("inspect", help="decode a token locally WITHOUT verifying it")
    inspect.add_argument("token", help="the token, or - to read it from stdin")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "keys":
            return run_keys_command(args)
        if args.command == "token" and args.debug_action == "inspect":
            return _inspect(_read_token(args.token))
        settings = load_settings(args.config)
        configure_logging(settings.log_level, settings.log_format)
        if args.command == "health":
            return _health(args, settings)
        if args.command == "serve":
            fix_mmap_threshold()  # sidecar/allocator.py: RSS after large snapshots
            asyncio.run(app.serve(settings))
            return 0
        if args.debug_action == "issue":
            return _issue(args, settings)
        return _verify(args, settings)
    except StartupError as error:
        print(f"authsidecar: {error}", file=sys.stderr)
        return EXIT_USAGE
    except AuthSidecarError as error:
        print(f"authsidecar: {error.reason}: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except UnreachableError as error:
        print(f"authsidecar: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    finally:
        close_output()  # bounded: a stalled log reader cannot hold the exit


def _read_token(value: str) -> str:
    return sys.stdin.read().strip() if value == "-" else value.strip()


def _inspect(token: str) -> int:
    try:
        header, claims = peek(token, max_bytes=65536)
    except AuthSidecarError as error:
        print(f"authsidecar: {error.reason}: {error}", file=sys.stderr)
        return EXIT_REFUSED
    print("# UNVERIFIED: decoded locally; says nothing about the signature or validity")
    print(json.dumps({"header": header, "claims": claims}, indent=2, sort_keys=True))
    return 0


def _issue(args: argparse.Namespace, settings: Settings) -> int:
    try:
        extra = json.loads(args.claims)
    except ValueError:
        print("authsidecar: --claims is not valid JSON", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(extra, dict):
        print("authsidecar: --claims must be a JSON object", file=sys.stderr)
        return EXIT_USAGE
    claims = struct_pb2.Struct()
    claims.update(extra)
    request = auth_pb2.IssueRequest(
        subject=args.sub,
        audience=args.aud,
        scope=args.scope,
        claims=claims,
        client_id=args.client_id,
        expires_in=args.ttl,
        refresh_token=args.refresh,
    )
    target = admin_target(args.target, settings)
    if args.output == "token":
        return _call(target, lambda stub: stub.Issue(request, timeout=10), just_token=True)
    return _call(target, lambda stub: stub.Issue(request, timeout=10))


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    request = auth_pb2.VerifyRequest(
        token=_read_token(args.token), audience=args.audience, required_scopes=args.scope
    )
    target = public_target(args.target, settings)
    return _call(target, lambda stub: stub.Verify(request, timeout=10))


def _health(args: argparse.Namespace, settings: Settings) -> int:
    target = public_target(args.target, settings)
    request = health_pb2.HealthCheckRequest(service=args.service)
    with grpc.insecure_channel(target) as channel:
        try:
            check = channel.unary_unary(
                HEALTH_CHECK,
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            reply = check(request, timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"authsidecar: {describe_failure(error, target)}", file=sys.stderr)
            return EXIT_REFUSED
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else EXIT_REFUSED


def _call(target: str, rpc: Any, *, just_token: bool = False) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        try:
            response = rpc(stub)
        except grpc.RpcError as error:
            print(f"authsidecar: {describe_failure(error, target)}", file=sys.stderr)
            return EXIT_REFUSED
    if just_token:
        print(response.access_token)
    else:
        print(json.dumps(reply_as_json(response), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
