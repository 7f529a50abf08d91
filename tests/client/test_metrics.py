"""`authsidecar.client.metrics`: the decision cache's `stats()` as Prometheus series (issue 15).

The series are read from a real interceptor (sync and asyncio) serving real calls behind the
fake Watch of tests/client/watch_fake.py, with Verify at a real sidecar, and compared with
what the interceptor's own `stats()` says and with what the calls did.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from authsidecar.client import AuthClient, AuthServerInterceptor
from authsidecar.client.metrics import register_decision_metrics
from authsidecar.v1 import auth_pb2
from tests.client.harness import OK, UNAUTHENTICATED
from tests.client.test_decision_cache import identity, watched, whoami
from tests.client.tokens import mint
from tests.support.marks import AIO
from tests.support.polling import eventually
from tests.support.sidecar import RunningSidecar

P = "authsidecar_client_"


@AIO
async def test_the_series_count_the_hits_misses_and_invalidations_of_real_calls(
    sidecar: RunningSidecar, socket_dir: Path, aio: bool
) -> None:
    token = await mint(sidecar)
    revoked = await identity(sidecar, token)
    registry = CollectorRegistry(auto_describe=True)
    async with watched(aio, sidecar, socket_dir) as (fake, b):
        register_decision_metrics({"orders": b.interceptor}, registry=registry)
        assert [(await whoami(aio, b, token)).code for _ in range(3)] == [OK] * 3
        await sidecar.public.Revoke(auth_pb2.RevokeRequest(token=token))
        fake.revoke_token(revoked.iss, revoked.jti)
        await eventually(lambda: b.interceptor.stats().invalidations["token_revoked"] == 1)
        assert (await whoami(aio, b, token)).code == UNAUTHENTICATED  # and the client's retry
        stats = b.interceptor.stats()

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(P + name, {"interceptor": "orders", **labels})

        assert value("decision_lookups_total", result="hit") == stats.hits == 2
        assert value("decision_lookups_total", result="miss") == stats.misses == 1
        assert value("decision_lookups_total", result="bypassed") == stats.bypassed
        assert value("decision_lookups_total", result="refused") == stats.refused_locally == 2
        assert value("decisions_stored_total") == stats.stored == 1
        assert value("decisions_not_stored_total") == stats.not_stored
        assert value("decision_invalidations_total", kind="token_revoked") == 1
        assert value("decision_invalidations_total", kind="gap") == 0
        assert value("decisions_invalidated_total") == stats.dropped == 1
        assert value("decision_entries") == stats.entries == 1  # the refusal kept until exp
        assert value("decision_tombstones") == stats.tombstones == 1
        assert value("decision_bytes") == stats.bytes > 0
        assert value("watch_current") == 1
        assert value("watch_subscriptions_total") == stats.subscriptions == 1
        staleness = value("watch_staleness_seconds")
        assert staleness is not None and 0 <= staleness < 2.0  # the configured bound


def test_interceptors_of_one_process_are_told_apart_and_unknowns_are_absent() -> None:
    """Two interceptors, one registry (duplicate series names would be refused); one that
    does not cache reports zeros, not current, and no staleness at all."""
    registry = CollectorRegistry(auto_describe=True)
    client = AuthClient("unix:/nonexistent.sock")
    first = AuthServerInterceptor(client, cache_decisions=False)
    second = AuthServerInterceptor(client, cache_decisions=False, coalesce_misses=False)
    with client, first, second:
        register_decision_metrics({"a": first, "b": second}, registry=registry)
        for name in ("a", "b"):
            labels = {"interceptor": name}
            lookups = {**labels, "result": "hit"}
            assert registry.get_sample_value(P + "decision_lookups_total", lookups) == 0
            assert registry.get_sample_value(P + "watch_current", labels) == 0
            assert registry.get_sample_value(P + "watch_staleness_seconds", labels) is None
        with pytest.raises(ValueError, match="Duplicated"):
            register_decision_metrics(first, registry=registry)


def test_importing_the_client_imports_no_prometheus() -> None:
    probe = "import sys, authsidecar.client\nprint('prometheus_client' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
