"""Metrics scraped over HTTP, audit lines and request ids, and no token text in any log line."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authsidecar.v1 import auth_pb2
from sidecar.clock import FixedClock
from sidecar.config import load_settings
from sidecar.errors import ConfigError
from sidecar.keys.keyset import write_manifest
from sidecar.logs import JsonFormatter, TextFormatter
from sidecar.transport.audit import claimed_ids
from tests.support.jwks_server import ExternalIssuer, JwksServer, LocalCa
from tests.support.keys import write_jwk_file
from tests.support.sidecar import RunningSidecar, running_sidecar

REQUEST_ID = "req-7f3a"


def _scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:  # noqa: S310 - our own loopback endpoint
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _tampered(token: str) -> str:
    """The same token with one signature character changed: parses, fails the signature."""
    i = len(token) - 10
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


async def _exercise(sidecar: RunningSidecar) -> list[str]:
    """Issue, verify (good and bad), refresh, replay the old refresh token, revoke.
    Returns every token that crossed the wire."""
    md = (("x-request-id", REQUEST_ID),)
    grant = await sidecar.admin.Issue(
        auth_pb2.IssueRequest(subject="alice", audience=["svc-a"], refresh_token=True),
        metadata=md,
    )
    await sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token), metadata=md)
    with pytest.raises(grpc.aio.AioRpcError):
        await sidecar.public.Verify(auth_pb2.VerifyRequest(token=_tampered(grant.access_token)))
    rotated = await sidecar.public.Refresh(
        auth_pb2.RefreshRequest(refresh_token=grant.refresh_token)
    )
    with pytest.raises(grpc.aio.AioRpcError):  # reuse: the family is revoked
        await sidecar.public.Refresh(auth_pb2.RefreshRequest(refresh_token=grant.refresh_token))
    await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=rotated.access_token))
    return [grant.access_token, grant.refresh_token, rotated.access_token, rotated.refresh_token]


async def test_metrics_count_requests_outcomes_and_token_lifecycle(data_dir: Path) -> None:
    async with running_sidecar(
        data_dir,
        tokens={"audiences": ["svc-a"], "refresh_grace_s": 0},
        metrics={"listen": "127.0.0.1:0"},
    ) as sidecar:
        await _exercise(sidecar)
        server = sidecar.app.metrics_server
        assert server is not None
        samples = await asyncio.to_thread(_scrape, server.address)
        ring = sidecar.app.service.ring

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    verify = "/authsidecar.v1.AuthService/Verify"
    refresh = "/authsidecar.v1.AuthService/Refresh"
    assert value("authsidecar_requests_total", method=verify, code="OK", reason="") == 1
    assert (
        value(
            "authsidecar_requests_total",
            method=verify,
            code="UNAUTHENTICATED",
            reason="SIGNATURE_INVALID",
        )
        == 1
    )
    assert (
        value(
            "authsidecar_requests_total",
            method=refresh,
            code="UNAUTHENTICATED",
            reason="REFRESH_TOKEN_REUSED",
        )
        == 1
    )
    assert value("authsidecar_request_duration_seconds_count", method=verify) == 2
    assert value("authsidecar_tokens_issued_total", kind="access") == 2
    assert value("authsidecar_tokens_issued_total", kind="refresh") == 2
    assert value("authsidecar_refreshes_total", outcome="rotated") == 1
    # The domain's outcome (issue 12), not a guess from the status code.
    assert value("authsidecar_refreshes_total", outcome="reused") == 1
    assert ("authsidecar_refreshes_total", (("outcome", "refused"),)) not in samples
    assert value("authsidecar_refresh_reuse_detected_total") == 1
    assert value("authsidecar_revocations_total") == 1
    assert value("authsidecar_store_up") == 1
    assert value("authsidecar_store_revocations_restored_total") == 0
    assert value("authsidecar_store_epoch_changes_total") == 0
    assert value("authsidecar_store_persistence_info", mode="process") == 1
    signing = ring.signing_key
    assert signing is not None
    assert value("authsidecar_keyset_info", version=ring.version, signing_kid=signing.kid) == 1
    assert value("authsidecar_keyset_age_seconds") >= 0
    assert ("authsidecar_verify_cache_hits_total", ()) in samples


async def test_no_token_text_appears_in_any_log_line(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_sidecar(
        data_dir, tokens={"audiences": ["svc-a"], "refresh_grace_s": 0}
    ) as sidecar:
        tokens = await _exercise(sidecar)
    lines = [JsonFormatter().format(r) for r in caplog.records]
    lines += [TextFormatter().format(r) for r in caplog.records]
    assert lines
    for token in tokens:
        signature = token.rsplit(".", 1)[1]
        for line in lines:
            assert token not in line
            assert signature not in line


async def test_audit_lines_name_subject_jti_reason_and_request_id(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authsidecar.audit")
    async with running_sidecar(
        data_dir, tokens={"audiences": ["svc-a"], "refresh_grace_s": 0}
    ) as sidecar:
        tokens = await _exercise(sidecar)
    entries = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "authsidecar.audit"
    ]
    events = [(e["event"], e["outcome"], e["reason"]) for e in entries]
    texts = [TextFormatter().format(r) for r in caplog.records if r.name == "authsidecar.audit"]
    assert len(texts) == len(entries)
    assert [t.count("request_id=") for t in texts] == [1] * len(texts), "printed once"
    assert f"request_id={REQUEST_ID}" in texts[0]
    assert events == [
        ("issue", "ok", ""),
        ("verify", "refused", "SIGNATURE_INVALID"),
        ("refresh", "ok", ""),
        ("refresh", "refused", "REFRESH_TOKEN_REUSED"),
        ("revoke", "ok", ""),
    ]
    issue, refresh = entries[0], entries[2]
    assert issue["sub"] == "alice" and len(issue["jti"]) > 8
    # The ids are the issued access tokens' own (Issue's, then Refresh's new one).
    assert (issue["sub"], issue["jti"]) == claimed_ids(tokens[0], 65536)
    assert (refresh["sub"], refresh["jti"]) == claimed_ids(tokens[2], 65536)
    assert issue["request_id"] == REQUEST_ID
    assert issue["peer"].startswith("unix:")
    # A refresh refused after its token verified (reuse) names the refresh token presented.
    reused = entries[3]
    assert (reused["sub"], reused["jti"]) == claimed_ids(tokens[1], 65536)
    # A token refused before its claims were parsed (bad signature) names nobody: the audit
    # line never parses a refused token itself (issue 12). Ids generated when none is sent.
    refused = entries[1]
    assert (refused["sub"], refused["jti"], refused["claims_verified"]) == ("", "", False)
    assert refused["request_id"] and refused["request_id"] != REQUEST_ID


async def test_audit_names_a_refused_token_by_the_ids_the_verifier_parsed(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authsidecar.audit")
    async with running_sidecar(data_dir, tokens={"audiences": ["svc-a"]}) as sidecar:
        grant = await sidecar.admin.Issue(
            auth_pb2.IssueRequest(subject="alice", audience=["svc-a"], scope="read")
        )
        refusals = [
            auth_pb2.VerifyRequest(token=grant.access_token, audience="elsewhere"),
            auth_pb2.VerifyRequest(token=grant.access_token, required_scopes=["admin"]),
        ]
        for request in refusals:
            with pytest.raises(grpc.aio.AioRpcError):
                await sidecar.public.Verify(request)
        sidecar.clock.advance(3600 * 24)
        with pytest.raises(grpc.aio.AioRpcError):
            await sidecar.public.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
    entries = [
        json.loads(JsonFormatter().format(r))
        for r in caplog.records
        if r.name == "authsidecar.audit" and r.audit["outcome"] == "refused"  # type: ignore[attr-defined]
    ]
    assert [e["reason"] for e in entries] == ["AUDIENCE_MISMATCH", "SCOPE_MISSING", "TOKEN_EXPIRED"]
    # Signed by us, refused on a claim or a check of the call: the ids it carries.
    assert {(e["sub"], e["jti"]) for e in entries} == {
        ("alice", claimed_ids(grant.access_token, 8192)[1])
    }


def test_metrics_refuse_a_non_loopback_address_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="metrics.allow_non_loopback"):
        load_settings(None, metrics={"listen": "0.0.0.0:9464"})
    allowed = load_settings(None, metrics={"listen": "0.0.0.0:9464", "allow_non_loopback": True})
    assert allowed.metrics.listen == "0.0.0.0:9464"


async def test_health_tcp_listener_serves_health_and_nothing_else(data_dir: Path) -> None:
    from grpc_health.v1 import health_pb2

    async with running_sidecar(data_dir, listen={"health_tcp": "127.0.0.1:0"}) as sidecar:
        address = sidecar.app.listeners.health_tcp_address
        assert address is not None
        async with grpc.aio.insecure_channel(address) as channel:
            check = channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            reply = await check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            verify = channel.unary_unary(
                "/authsidecar.v1.AuthService/Verify",
                request_serializer=auth_pb2.VerifyRequest.SerializeToString,
                response_deserializer=auth_pb2.VerifyResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await verify(auth_pb2.VerifyRequest(token="x"), timeout=10)
            assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_key_reload_refusals_are_exported_until_a_good_set_is_read(data_dir: Path) -> None:
    keys = data_dir / "keyset"
    keys.mkdir()
    write_jwk_file(keys, "ES256", "k1")
    write_manifest(keys, "k1", 0)
    async with running_sidecar(
        data_dir,
        keys={"directory": str(keys), "reload_interval_s": 0},  # reload_now() only
        metrics={"listen": "127.0.0.1:0"},
    ) as sidecar:
        watcher, server = sidecar.app.key_watcher, sidecar.app.metrics_server
        assert watcher is not None and server is not None

        async def reloads() -> tuple[float, float, float]:
            samples = await asyncio.to_thread(_scrape, server.address)
            return (
                samples[("authsidecar_key_reloads_total", (("result", "swapped"),))],
                samples[("authsidecar_key_reloads_total", (("result", "refused"),))],
                samples[("authsidecar_key_reload_ok", ())],
            )

        assert await reloads() == (0, 0, 1)
        (keys / "keyset.json").write_text('{"signing_kid": "nope"}')
        assert not watcher.reload_now()
        assert await reloads() == (0, 1, 0)
        write_jwk_file(keys, "ES256", "k2")
        write_manifest(keys, "k1", 0)
        assert watcher.reload_now()
        assert await reloads() == (1, 1, 1)


async def test_external_issuer_jwks_fetches_are_exported(data_dir: Path) -> None:
    ca = LocalCa.create(data_dir)
    jwks = JwksServer(ca)
    idp = ExternalIssuer()
    idp.add_key("idp-1")
    jwks.document = idp.jwks()
    issuer = {
        "issuer": ExternalIssuer.issuer,
        "audiences": ["api://orders"],
        "jwks_url": jwks.url,
        "ca_file": str(ca.ca_file),
        "refresh_s": 300,
        "min_refetch_interval_s": 0,
        "timeout_s": 2,
    }
    try:
        async with running_sidecar(
            data_dir,
            clock=FixedClock(time.time()),  # PyJWT stamps iat/exp from the real clock
            issuers=[issuer],
            metrics={"listen": "127.0.0.1:0"},
        ) as sidecar:
            server = sidecar.app.metrics_server
            assert server is not None
            idp.add_key("idp-2")  # a token naming a new kid makes the sidecar fetch again
            jwks.document = idp.jwks()
            token = idp.token("idp-2")
            await sidecar.public.Verify(auth_pb2.VerifyRequest(token=token))
            jwks.stop()
            (remote,) = sidecar.app.remote_keys
            assert not await remote.refresh()
            samples = await asyncio.to_thread(_scrape, server.address)
    finally:
        jwks.stop()
    name = (("issuer", ExternalIssuer.issuer),)
    assert samples[("authsidecar_issuer_jwks_fetches_total", (*name, ("result", "ok")))] == 2
    assert samples[("authsidecar_issuer_jwks_fetches_total", (*name, ("result", "failed")))] == 1
    assert samples[("authsidecar_issuer_jwks_demand_fetches_total", name)] == 1
    assert samples[("authsidecar_issuer_jwks_ok", name)] == 0


def test_audit_text_line_prints_the_request_id_once_during_the_call() -> None:
    """As the live handler formats it: inside the call, where both the call context and the
    audit fields know the request id (issue 14 saw `request_id=` twice)."""
    from sidecar.calls import CallInfo, current_call
    from sidecar.transport.audit import audit

    texts: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            texts.append(TextFormatter().format(record))

    audit_logger = logging.getLogger("authsidecar.audit")
    handler, level = _Keep(), audit_logger.level
    audit_logger.addHandler(handler)
    audit_logger.setLevel(logging.INFO)
    token = current_call.set(CallInfo("req-once", "/authsidecar.v1.AuthService/Issue", "unix:"))
    try:
        audit("issue", "ok", sub="alice", jti="j1")
    finally:
        current_call.reset(token)
        audit_logger.removeHandler(handler)
        audit_logger.setLevel(level)
    (text,) = texts
    assert text.count("request_id=") == 1 and "request_id=req-once" in text
