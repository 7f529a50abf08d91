"""SIGTERM under an asyncio interceptor's misses fails no call (issue 15, VerifyStream).

The sidecar is a real `authsidecar serve` process (test_drain.py's fixture); service B is
the asyncio server interceptor without a decision cache, so every call is a miss, sent as a
message on its VerifyStream. 16 callers call B back to back while the sidecar gets SIGTERM:
the stream is served through the drain, ends UNAVAILABLE / SHUTTING_DOWN when the sidecar
starts refusing, and the batches it left unanswered are resent as unary calls. Callers may
see only OK and UNAVAILABLE (what unary Verify gives them at a stop), never CANCELLED,
INTERNAL or UNKNOWN, and no caller hangs.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import grpc

from authsidecar.client import AuthPolicy, StaticTokenSource
from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from tests.client.harness import OK, call_b, callee
from tests.integration.test_drain import DRAIN_S, GRACE_S, Served, served

__all__ = ["served"]  # the fixture, imported for pytest

CALLERS = 16


async def test_sigterm_with_interceptor_misses_in_flight_fails_no_call(served: Served) -> None:
    async with grpc.aio.insecure_channel(served.admin) as admin:
        grant = await auth_pb2_grpc.AuthServiceStub(admin).Issue(
            auth_pb2.IssueRequest(subject="alice", audience=["svc"]), timeout=10
        )
    codes: Counter[str] = Counter()
    ok_after_signal = 0
    signalled: list[float] = []
    stop = asyncio.Event()
    policy = AuthPolicy(audience="svc")
    async with callee(True, served.unix, policy, cache_decisions=False) as b:
        batcher = b.interceptor._client
        stream = getattr(batcher, "_stream", None)
        assert stream is not None

        async def caller() -> None:
            nonlocal ok_after_signal
            source = StaticTokenSource(grant.access_token)
            while not stop.is_set():
                outcome = await call_b(True, b.target, source, "Whoami")
                codes[outcome.code.name] += 1
                if outcome.code == OK and signalled:
                    ok_after_signal += 1

        tasks = [asyncio.create_task(caller()) for _ in range(CALLERS)]
        try:
            async with asyncio.timeout(30):
                while codes["OK"] < 200:
                    await asyncio.sleep(0.05)
            answered_before = stream.answered
            signalled.append(time.monotonic())
            served.proc.send_signal(signal.SIGTERM)
            returncode = await asyncio.to_thread(served.proc.wait, timeout=DRAIN_S + GRACE_S + 20)
            await asyncio.sleep(0.5)  # callers now find nothing listening: UNAVAILABLE
        finally:
            stop.set()
            async with asyncio.timeout(60):  # no caller hangs
                await asyncio.gather(*tasks)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert returncode == 0, served.stderr.read_text()
    # The misses went on the stream, before the signal and during the drain.
    assert answered_before > 0
    assert stream.answered > answered_before
    assert ok_after_signal > 0, codes
    assert "Traceback" not in served.stderr.read_text()
