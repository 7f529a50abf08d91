"""Arbitrary bytes on the wire, for every RPC (issue 13, finding 3).

Generic grpc calls with no serializer send the bytes as the request message itself: random
bytes, and protobuf-shaped bytes whose length-delimited fields hold invalid UTF-8 (what a
string field refuses). Every answer must be OK or a documented status: never INTERNAL or
UNKNOWN, never the parser's exception text, and a code we map always carries its ErrorInfo
reason. The server's log gets no traceback and at most a rate-limited line.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authsidecar.v1 import auth_pb2
from tests.support.sidecar import RunningSidecar, running_sidecar

REASONS = {name for name, number in auth_pb2.ErrorReason.items() if number}
# The codes our status table produces: each must come with an ErrorInfo reason.
MAPPED = {
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # WATCH_SUBSCRIBER_LIMIT; grpc's own size caps are
    # not reached by these small messages (README, "Failure reasons")
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAVAILABLE,
}
# What a parser's or grpc's exception text looks like; none may reach a caller.
LEAKS = ("Traceback", "Unexpected", "<class", "DecodeError", "Error parsing", "utf-8", "codec")


@dataclass(frozen=True)
class Rpc:
    target: str  # "public", "admin" or "health"
    path: str
    kind: str  # "unary", "server_stream" or "bidi"
    # Codes allowed besides OK and MAPPED (the RPC's own documented answers).
    also: frozenset[grpc.StatusCode] = frozenset()


_AUTH = "/authsidecar.v1.AuthService/"
_HEALTH = "/grpc.health.v1.Health/"
RPCS = [
    *(
        Rpc("public", _AUTH + name, "unary")
        for name in ("Issue", "Verify", "VerifyBatch", "Refresh", "Introspect", "Revoke")
    ),
    Rpc("public", _AUTH + "GetJwks", "unary"),
    # A junk epoch or sequence is a reset (transport/watch.py): the first message is a sync.
    Rpc("public", _AUTH + "Watch", "server_stream"),
    Rpc("admin", _AUTH + "Issue", "unary"),
    Rpc("public", "/envoy.service.auth.v3.Authorization/Check", "unary"),
    # grpc.health.v1 answers an unknown service name NOT_FOUND (Check) or in-band (Watch).
    Rpc("public", _HEALTH + "Check", "unary", frozenset({grpc.StatusCode.NOT_FOUND})),
    Rpc("health", _HEALTH + "Check", "unary", frozenset({grpc.StatusCode.NOT_FOUND})),
    Rpc("public", _HEALTH + "Watch", "server_stream"),
    Rpc("public", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "bidi"),
]


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def _field(draw: st.DrawFn) -> bytes:
    """One protobuf field: often length-delimited with non-UTF-8 bytes, sometimes other
    wire types, sometimes lying about its length."""
    number = draw(st.integers(min_value=1, max_value=6))
    wire = draw(st.sampled_from([2, 2, 2, 0, 1, 5, 3, 7]))
    tag = _varint(number << 3 | wire)
    if wire == 2:
        payload = draw(
            st.one_of(
                st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"a\x80b", b"\xf8"]),
                st.binary(max_size=24),
            )
        )
        length = len(payload) + draw(st.sampled_from([0, 0, 0, 1, -1]))
        return tag + _varint(max(length, 0)) + payload
    if wire == 0:
        return tag + _varint(draw(st.integers(min_value=0, max_value=2**70)))
    return tag + draw(st.binary(max_size=9))


WIRE_BYTES = st.one_of(
    st.binary(max_size=128),
    st.lists(_field(), min_size=1, max_size=5).map(b"".join),
)


@pytest.fixture
async def wire(data_dir: Path) -> AsyncIterator[tuple[RunningSidecar, dict[str, grpc.aio.Channel]]]:
    async with running_sidecar(
        data_dir,
        envoy={"enabled": True},
        listen={"health_tcp": "127.0.0.1:0"},
    ) as sc:
        health_tcp = sc.app.listeners.health_tcp_address
        assert health_tcp is not None
        channels = {
            "public": grpc.aio.insecure_channel(sc.unix_target),
            "admin": grpc.aio.insecure_channel(sc.admin_target),
            "health": grpc.aio.insecure_channel(health_tcp),
        }
        try:
            yield sc, channels
        finally:
            for channel in channels.values():
                await channel.close()


def _identity(data: bytes) -> bytes:
    """Raw bytes both ways: the bytes under test are the request message itself."""
    return data


async def _call(channel: grpc.aio.Channel, rpc: Rpc, raw: bytes) -> grpc.aio.AioRpcError | None:
    """The call's failure, or None when it answered (a stream: its first message)."""
    raw_kwargs = {"request_serializer": _identity, "response_deserializer": _identity}
    try:
        if rpc.kind == "unary":
            await channel.unary_unary(rpc.path, **raw_kwargs)(raw, timeout=10)
            return None
        stream: grpc.aio.UnaryStreamCall[bytes, bytes] | grpc.aio.StreamStreamCall[bytes, bytes]
        if rpc.kind == "server_stream":
            stream = channel.unary_stream(rpc.path, **raw_kwargs)(raw, timeout=10)
        else:
            stream = channel.stream_stream(rpc.path, **raw_kwargs)(iter([raw]), timeout=10)
        async for _ in stream:
            break  # answered; an open stream is ended by us
        stream.cancel()
        return None
    except grpc.aio.AioRpcError as error:
        return error


def _check(rpc: Rpc, error: grpc.aio.AioRpcError | None) -> None:
    if error is None:
        return
    code, details = error.code(), error.details() or ""
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (rpc, code, details)
    assert not any(leak in details for leak in LEAKS), (rpc, details)
    if code in MAPPED:
        # AioRpcError has the Call methods from_call reads (code, trailing_metadata).
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None, (rpc, code, details)
        reasons = set()
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reasons.add(info.reason)
        assert reasons and reasons <= REASONS, (rpc, code, reasons)
    else:
        assert code in rpc.also, (rpc, code, details)


def _assert_quiet_log(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    # One line at once, then at most one a minute (transport/ratelimit.py).
    malformed = [r for r in caplog.records if "did not parse" in r.getMessage()]
    assert len(malformed) <= 2, caplog.text


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=WIRE_BYTES)
async def test_every_rpc_answers_arbitrary_bytes_with_ok_or_a_documented_status(
    wire: tuple[RunningSidecar, dict[str, grpc.aio.Channel]],
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
) -> None:
    _, channels = wire
    caplog.set_level(logging.WARNING)
    for rpc in RPCS:
        _check(rpc, await _call(channels[rpc.target], rpc, raw))
    _assert_quiet_log(caplog)


# Field 1 is a string in most requests (invalid UTF-8 there fails the parse), a message in
# VerifyBatch and Check (the nested form reaches a string or a bad tag inside it); GetJwks has
# no fields, so only the bytes that are no protobuf at all fail it.
PAYLOADS = {
    "string_not_utf8": b"\x0a\x03\xff\xfeA",
    "nested_not_utf8": b"\x0a\x05\x0a\x03\xff\xfeA",
    "not_protobuf": b"\x0f\x00",  # field 1 with wire type 7, which does not exist
}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("rpc", RPCS, ids=[f"{r.target}{r.path}" for r in RPCS])
async def test_a_request_that_does_not_parse_is_invalid_request_without_parser_text(
    wire: tuple[RunningSidecar, dict[str, grpc.aio.Channel]],
    caplog: pytest.LogCaptureFixture,
    rpc: Rpc,
    payload: str,
) -> None:
    _, channels = wire
    caplog.set_level(logging.WARNING)
    raw = PAYLOADS[payload]
    error = await _call(channels[rpc.target], rpc, raw)
    if rpc.path.endswith("/GetJwks") and payload != "not_protobuf":
        assert error is None, error  # an unknown field: parsed, and answered
        return
    assert error is not None, rpc
    _check(rpc, error)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (rpc, error.code())
    assert error.details() == "request message malformed"
    # A flood of them: still one log line (the first), no traceback.
    for _ in range(20):
        await _call(channels[rpc.target], rpc, raw)
    _assert_quiet_log(caplog)
    malformed = [r for r in caplog.records if "did not parse" in r.getMessage()]
    assert len(malformed) == 1, caplog.text
