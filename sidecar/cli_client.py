"""The CLI's client side: where a command finds a running sidecar, and how its answers print.

A target comes from, in order: `--target`, the environment (`AUTHSIDECAR_ADMIN_ADDR` for
Issue, `AUTHSIDECAR_ADDR` for the others, as the client library reads it), the configured
socket when it exists, then (not for Issue, served on the admin socket alone) the configured
TCP address. Nothing is guessed from the current directory: a missing socket is an
`UnreachableError` whose one line says how to point elsewhere (issue 14).
"""

from __future__ import annotations

import os
from typing import Any

import grpc
from google.protobuf import descriptor, json_format, message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from sidecar.config import Settings

__all__ = [
    "ADDR_ENV",
    "ADMIN_ADDR_ENV",
    "POINT_ELSEWHERE",
    "UnreachableError",
    "admin_target",
    "describe_failure",
    "describe_rpc_error",
    "public_target",
    "reply_as_json",
]

ADDR_ENV = "AUTHSIDECAR_ADDR"
ADMIN_ADDR_ENV = "AUTHSIDECAR_ADMIN_ADDR"
POINT_ELSEWHERE = f"pass --target ADDRESS, set ${ADDR_ENV}, or --config the sidecar's settings file"
_INT64 = frozenset(
    {descriptor.FieldDescriptor.CPPTYPE_INT64, descriptor.FieldDescriptor.CPPTYPE_UINT64}
)


class UnreachableError(Exception):
    """No sidecar where the CLI would call it; the message says how to point elsewhere."""


def _given(explicit: str | None, env: str) -> str:
    """The address the caller named: `--target`, else the environment variable; "" if
    neither (both outrank the settings file)."""
    return explicit or os.environ.get(env, "")


def public_target(explicit: str | None, settings: Settings) -> str:
    """Verify and health: see the module docstring for the order."""
    given = _given(explicit, ADDR_ENV)
    if given:
        return given
    path = settings.public_socket
    if path is not None and path.exists():
        return f"unix:{path.resolve()}"
    if settings.listen.tcp and not settings.listen.tcp.endswith(":0"):
        return settings.listen.tcp
    where = f"no socket at {path.resolve()} and no fixed TCP port" if path else "no address"
    raise UnreachableError(f"{where} to call; {POINT_ELSEWHERE}")


def admin_target(explicit: str | None, settings: Settings) -> str:
    """Issue is served on the admin socket alone, so there is no TCP fallback."""
    given = _given(explicit, ADMIN_ADDR_ENV)
    if given:
        return given
    path = settings.admin_socket
    if path is None:
        raise UnreachableError(
            'listen.admin_socket is "" in this configuration: this sidecar issues nothing; '
            f"pass --target unix:/path/to/admin.sock or set ${ADMIN_ADDR_ENV}"
        )
    if not path.exists():
        raise UnreachableError(
            f"no admin socket at {path.resolve()} (is the sidecar running, with this "
            f"configuration, from this directory?); pass --target unix:/path/to/admin.sock, "
            f"set ${ADMIN_ADDR_ENV}, or --config the sidecar's settings file"
        )
    return f"unix:{path.resolve()}"


def reply_as_json(reply: message.Message) -> dict[str, Any]:
    """The reply as JSON with numbers as numbers (issue 14): proto3's JSON mapping writes
    int64 fields (`expires_in`, `exp`, `iat`) as strings and a Struct's numbers as doubles."""
    out: dict[str, Any] = json_format.MessageToDict(reply, preserving_proto_field_name=True)
    for field in reply.DESCRIPTOR.fields:
        if field.cpp_type in _INT64 and field.name in out:
            value = out[field.name]
            out[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    if isinstance(out.get("claims"), dict):
        # Here, not at the top: importing the client package costs every `serve` (issue 16).
        from authsidecar.client._models import json_numbers

        out["claims"] = json_numbers(out["claims"])
    return out


def describe_failure(error: grpc.RpcError, target: str) -> str:
    """describe_rpc_error, plus where we called and how to call elsewhere when nothing
    answered there."""
    text = describe_rpc_error(error)
    if text.startswith("UNAVAILABLE:"):  # nothing answered (STORE_UNAVAILABLE carries a reason)
        text += f" (called {target}; {POINT_ELSEWHERE})"
    return text


def describe_rpc_error(error: grpc.RpcError) -> str:
    """`UNAUTHENTICATED TOKEN_EXPIRED: token expired`, from the status and its ErrorInfo."""
    code = error.code() if isinstance(error, grpc.Call) else None
    reason = ""
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    details: list[Any] = list(status.details) if status is not None else []
    for detail in details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason = info.reason
    name = code.name if code is not None else "ERROR"
    message = error.details() if isinstance(error, grpc.Call) else str(error)
    return f"{name} {reason}: {message}".replace(" :", ":")
