"""Optional OpenTelemetry tracing (config `tracing`): one SERVER span per RPC on a real server,
the caller's traceparent as parent, the refusal reason, never a token; off: not installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

import sidecar.transport.server as server_module
from authsidecar.v1 import auth_pb2
from sidecar.errors import ConfigError
from tests.support.sidecar import reason_of, running_sidecar

VERIFY = "authsidecar.v1.AuthService/Verify"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TOKENS = {"audiences": ["svc-a"]}


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """An SDK TracerProvider exporting to memory, set globally for the test and then undone
    (the API allows setting the global provider once per process; we reset its guard)."""
    saved = (trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace.set_tracer_provider(provider)
    try:
        yield memory
    finally:
        provider.shutdown()
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE = saved


def _verify_spans(memory: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in memory.get_finished_spans() if span.name == VERIFY]


async def test_verify_produces_one_server_span(
    data_dir: Path, exporter: InMemorySpanExporter
) -> None:
    async with running_sidecar(data_dir, tokens=TOKENS, tracing={"enabled": True}) as sidecar:
        grant = await sidecar.admin.Issue(
            auth_pb2.IssueRequest(subject="alice", audience=["svc-a"])
        )
        exporter.clear()
        await sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
    spans = exporter.get_finished_spans()
    assert [span.name for span in spans] == [VERIFY]
    span = spans[0]
    assert span.kind is SpanKind.SERVER
    assert span.status.status_code is StatusCode.UNSET
    assert span.parent is None
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "authsidecar.v1.AuthService",
        "rpc.method": "Verify",
        "rpc.grpc.status_code": 0,
    }


async def test_refused_verify_carries_reason_and_error_status(
    data_dir: Path, exporter: InMemorySpanExporter
) -> None:
    async with running_sidecar(data_dir, tokens=TOKENS, tracing={"enabled": True}) as sidecar:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sidecar.public.Verify(auth_pb2.VerifyRequest(token="not.a.token"))
    code, reason = reason_of(caught.value)
    assert code is grpc.StatusCode.UNAUTHENTICATED and reason
    (span,) = _verify_spans(exporter)
    attributes = dict(span.attributes or {})
    assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert attributes["authsidecar.reason"] == reason
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "UNAUTHENTICATED"
    assert not span.events  # no exception recorded: its text is not ours to export


async def test_metadata_limit_refusal_is_traced(
    data_dir: Path, exporter: InMemorySpanExporter
) -> None:
    async with running_sidecar(data_dir, tokens=TOKENS, tracing={"enabled": True}) as sidecar:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sidecar.public.Verify(
                auth_pb2.VerifyRequest(token="x"), metadata=(("x-big", "a" * 20000),)
            )
    assert reason_of(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, "METADATA_TOO_LARGE")
    (span,) = _verify_spans(exporter)
    code = dict(span.attributes or {})["rpc.grpc.status_code"]
    assert code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {})["authsidecar.reason"] == "METADATA_TOO_LARGE"
    assert "x-big" not in str(span.attributes)


async def test_client_traceparent_is_the_parent(
    data_dir: Path, exporter: InMemorySpanExporter
) -> None:
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
    async with running_sidecar(data_dir, tokens=TOKENS, tracing={"enabled": True}) as sidecar:
        grant = await sidecar.admin.Issue(
            auth_pb2.IssueRequest(subject="alice", audience=["svc-a"])
        )
        await sidecar.public.Verify(
            auth_pb2.VerifyRequest(token=grant.access_token),
            metadata=(("traceparent", traceparent),),
        )
    (span,) = _verify_spans(exporter)
    assert span.parent is not None and span.parent.is_remote
    assert span.parent.trace_id == int(TRACE_ID, 16)
    assert span.parent.span_id == int(PARENT_SPAN_ID, 16)
    assert span.context is not None and span.context.trace_id == int(TRACE_ID, 16)


async def test_no_token_or_metadata_text_in_any_span(
    data_dir: Path, exporter: InMemorySpanExporter
) -> None:
    secret_md = "very-private-metadata-value"
    async with running_sidecar(data_dir, tokens=TOKENS, tracing={"enabled": True}) as sidecar:
        grant = await sidecar.admin.Issue(
            auth_pb2.IssueRequest(subject="alice-subject", audience=["svc-a"], refresh_token=True)
        )
        await sidecar.public.Verify(
            auth_pb2.VerifyRequest(token=grant.access_token),
            metadata=(("authorization", f"Bearer {grant.access_token}"), ("x-s", secret_md)),
        )
        rotated = await sidecar.public.Refresh(
            auth_pb2.RefreshRequest(refresh_token=grant.refresh_token)
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token + "x"))
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=rotated.access_token))
    spans = exporter.get_finished_spans()
    assert {span.name.rpartition("/")[2] for span in spans} >= {
        "Issue", "Verify", "Refresh", "Revoke",
    }  # fmt: skip
    secrets = [grant.access_token, grant.refresh_token, rotated.access_token, secret_md]
    # Every token segment (header, payload, signature) too, and the subject claim.
    fragments = {part for token in secrets for part in token.split(".") if len(part) > 8}
    fragments.add("alice-subject")
    for span in spans:
        texts = [span.name, span.status.description or ""]
        texts += [f"{key}={value!r}" for key, value in (span.attributes or {}).items()]
        texts += [event.name for event in span.events]
        for text in texts:
            for fragment in fragments:
                assert fragment not in text, (span.name, text)


async def test_disabled_installs_no_tracing_layer_and_records_nothing(
    data_dir: Path, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> None:
        raise AssertionError("TracingLayer constructed with tracing disabled")

    monkeypatch.setattr(server_module, "TracingLayer", refuse)
    async with running_sidecar(data_dir, tokens=TOKENS) as sidecar:
        assert not sidecar.settings.tracing.enabled
        grant = await sidecar.admin.Issue(
            auth_pb2.IssueRequest(subject="alice", audience=["svc-a"])
        )
        await sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
    assert exporter.get_finished_spans() == ()


async def test_enabled_without_opentelemetry_is_a_config_error(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes `import opentelemetry` raise ImportError.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigError, match=r"tracing\.enabled.*install opentelemetry-api/sdk"):
        async with running_sidecar(data_dir, tokens=TOKENS, tracing={"enabled": True}):
            pass
