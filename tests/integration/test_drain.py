"""SIGTERM under load fails no call (issue 13, finding 5): a real `authsidecar serve` process.

16 callers (8 over the Unix socket, 8 over TCP) call Verify back to back; a Health/Watch
stream is open; the process gets SIGTERM. Every outcome is counted: only OK and UNAVAILABLE
may appear (CANCELLED, which clients do not retry, never), health says NOT_SERVING while calls
are still served, the stream ends UNAVAILABLE rather than holding the grace, and the process
exits 0 within drain + grace.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from sidecar.app import start_app
from sidecar.config import load_settings
from tests.support.redis import RedisServer
from tests.support.sidecar import reason_of, short_tmpdir

BANNER = re.compile(r"authsidecar serving .* unix=(\S+) tcp=(\S+) admin=(\S+)")
DRAIN_S = 2.0
GRACE_S = 5.0
CALLERS_PER_TRANSPORT = 8


@dataclass
class Served:
    proc: subprocess.Popen[str]
    unix: str
    tcp: str
    admin: str
    stderr: Path


@dataclass
class Tally:
    """Every call outcome, and when each non-OK one came relative to the signal."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    failures_at: list[tuple[str, float]] = field(default_factory=list)
    ok_after_not_serving: int = 0

    def add(self, code: str, reason: str, at: float | None) -> None:
        with self.lock:
            self.outcomes[code] += 1
            if code != "OK":
                self.reasons[reason or "-"] += 1
                if at is not None:
                    self.failures_at.append((code, at))


@pytest.fixture
def served() -> Iterator[Served]:
    with short_tmpdir() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}
        env.update(
            AUTHSIDECAR_DATA_DIR=str(data_dir),
            AUTHSIDECAR_LISTEN__TCP="127.0.0.1:0",
            AUTHSIDECAR_LISTEN__DRAIN_S=str(DRAIN_S),
            AUTHSIDECAR_LISTEN__GRACE_PERIOD_S=str(GRACE_S),
        )
        stderr = data_dir / "stderr.log"
        with stderr.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert proc.stdout is not None
        match = BANNER.search(proc.stdout.readline())
        try:
            assert match is not None, stderr.read_text()
            yield Served(
                proc, f"unix:{match.group(1)}", match.group(2), f"unix:{match.group(3)}", stderr
            )
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)


def _reason(error: grpc.RpcError) -> str:
    # A failed sync call is also its grpc.Call, which from_call reads.
    status = rpc_status.from_call(cast(grpc.Call, error))
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def test_sigterm_under_load_fails_no_call(served: Served) -> None:
    with grpc.insecure_channel(served.admin) as admin:
        token = (
            auth_pb2_grpc.AuthServiceStub(admin)
            .Issue(auth_pb2.IssueRequest(subject="alice", audience=["svc"]), timeout=10)
            .access_token
        )
    tally = Tally()
    signalled: list[float] = []  # the monotonic time of SIGTERM, once sent
    not_serving_at: list[float] = []
    stop = threading.Event()

    def since_signal() -> float | None:
        return time.monotonic() - signalled[0] if signalled else None

    def caller(target: str) -> None:
        # One channel per caller, so every connection sees the whole stop.
        with grpc.insecure_channel(target) as channel:
            verify = auth_pb2_grpc.AuthServiceStub(channel).Verify
            request = auth_pb2.VerifyRequest(token=token)
            while not stop.is_set():
                try:
                    verify(request, timeout=10)
                except grpc.RpcError as error:
                    tally.add(error.code().name, _reason(error), since_signal())
                else:
                    tally.add("OK", "", None)
                    if not_serving_at:
                        with tally.lock:
                            tally.ok_after_not_serving += 1

    def health_poller() -> None:
        with grpc.insecure_channel(served.tcp) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set() and not not_serving_at:
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                except grpc.RpcError:
                    return
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    not_serving_at.append(time.monotonic())
                time.sleep(0.02)

    watch_statuses: list[int] = []
    watch_end: list[str] = []

    def watcher() -> None:
        with grpc.insecure_channel(served.unix) as channel:
            stub: Any = health_pb2_grpc.HealthStub(channel)
            try:
                for reply in stub.Watch(health_pb2.HealthCheckRequest(), timeout=60):
                    watch_statuses.append(reply.status)
                watch_end.append("OK")
            except grpc.RpcError as error:
                watch_end.append(error.code().name)

    auth_watch_end: list[tuple[str, str]] = []
    auth_watch_messages: list[str] = []

    def auth_watcher() -> None:
        with grpc.insecure_channel(served.tcp) as channel:
            watch = auth_pb2_grpc.AuthServiceStub(channel).Watch
            try:
                for event in watch(auth_pb2.WatchRequest(), timeout=60):
                    auth_watch_messages.append(event.WhichOneof("event") or "")
                auth_watch_end.append(("OK", ""))
            except grpc.RpcError as error:
                auth_watch_end.append((error.code().name, _reason(error)))

    targets = [served.unix] * CALLERS_PER_TRANSPORT + [served.tcp] * CALLERS_PER_TRANSPORT
    threads = [threading.Thread(target=caller, args=(t,)) for t in targets]
    threads += [threading.Thread(target=health_poller), threading.Thread(target=watcher)]
    threads += [threading.Thread(target=auth_watcher)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while tally.outcomes["OK"] < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tally.outcomes["OK"] >= 200, tally.outcomes
        signalled.append(time.monotonic())
        served.proc.send_signal(signal.SIGTERM)
        returncode = served.proc.wait(timeout=DRAIN_S + GRACE_S + 20)
        elapsed = time.monotonic() - signalled[0]
        time.sleep(0.5)  # callers now find nothing listening: UNAVAILABLE
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    log = served.stderr.read_text()
    failures = sorted(tally.failures_at, key=lambda f: f[1])
    summary = f"{tally.outcomes} reasons={tally.reasons} first failures={failures[:20]}"
    assert set(tally.outcomes) <= {"OK", "UNAVAILABLE"}, summary
    assert returncode == 0, log
    assert elapsed < DRAIN_S + GRACE_S, f"exit took {elapsed:.2f}s"
    # Health said NOT_SERVING during the drain while calls kept succeeding.
    assert not_serving_at, "health never reported NOT_SERVING"
    assert not_serving_at[0] - signalled[0] < DRAIN_S, "NOT_SERVING only after the drain"
    assert tally.ok_after_not_serving > 0, summary
    # Nothing failed during the drain itself: the first refusal comes after drain_s.
    assert failures, summary
    assert failures[0][1] >= DRAIN_S, summary
    # The Watch stream saw SERVING then NOT_SERVING and was ended, not left to the grace.
    assert watch_statuses[:1] == [health_pb2.HealthCheckResponse.SERVING], watch_statuses
    assert health_pb2.HealthCheckResponse.NOT_SERVING in watch_statuses, watch_statuses
    assert watch_end == ["UNAVAILABLE"], watch_end
    # So did the AuthService/Watch stream (it sent its sync first), with the reason.
    assert auth_watch_messages[:1] == ["sync"], auth_watch_messages
    assert auth_watch_end == [("UNAVAILABLE", "SHUTTING_DOWN")], auth_watch_end
    assert "Traceback" not in log, log
    # Nor a line from grpc core (its ERROR lines start "E<mmdd>"): the stop is clean.
    assert not re.search(r"^[EF]\d{4} ", log, re.MULTILINE), log


def test_a_second_signal_ends_the_drain_early() -> None:
    with short_tmpdir() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}
        env.update(
            AUTHSIDECAR_DATA_DIR=str(data_dir),
            AUTHSIDECAR_LISTEN__TCP="127.0.0.1:0",
            AUTHSIDECAR_LISTEN__DRAIN_S="120",
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            match = BANNER.search(proc.stdout.readline())
            assert match is not None
            with grpc.insecure_channel(match.group(2)) as channel:
                stub: Any = health_pb2_grpc.HealthStub(channel)
                proc.send_signal(signal.SIGTERM)
                # Draining: still answering, and NOT_SERVING.
                deadline = time.monotonic() + 30
                while True:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                        break
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            # Well inside the 120 s drain (a bound for a loaded machine, not a speed claim).
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "Traceback" not in err


async def test_stop_lets_a_running_call_finish_and_refuses_new_ones_with_shutting_down(
    redis_server: RedisServer,
) -> None:
    """In process, with a real Redis that we pause (SIGSTOP): a Refresh is running (waiting
    on the store) when the stop begins. A call that arrives meanwhile is refused UNAVAILABLE
    / SHUTTING_DOWN without being run, the stop waits for the Refresh, and once Redis resumes
    the Refresh finishes OK."""
    assert redis_server.proc is not None
    with short_tmpdir() as data_dir:
        settings = load_settings(
            None,
            data_dir=data_dir,
            listen={"tcp": "127.0.0.1:0", "grace_period_s": 60},
            store={"backend": "redis", "redis_url": redis_server.url, "redis_timeout_s": 30},
            tokens={"default_audience": ["svc"]},
        )
        app = await start_app(settings)
        listeners = app.listeners
        admin = grpc.aio.insecure_channel(f"unix:{listeners.admin_socket}")
        public = grpc.aio.insecure_channel(f"unix:{listeners.unix_socket}")
        resumed = False
        try:
            stub = auth_pb2_grpc.AuthServiceStub(public)
            grant = await auth_pb2_grpc.AuthServiceStub(admin).Issue(
                auth_pb2.IssueRequest(subject="alice", refresh_token=True), timeout=30
            )
            verify = auth_pb2.VerifyRequest(token=grant.access_token)
            await stub.Verify(verify, timeout=30)  # the connection is open before the stop
            # The server counts a call until its last bytes are written, a moment after the
            # client has them: wait until nothing is counted, so what is next is the Refresh.
            while listeners.gate.running:
                await asyncio.sleep(0.005)
            redis_server.proc.send_signal(signal.SIGSTOP)
            refresh = asyncio.ensure_future(
                stub.Refresh(auth_pb2.RefreshRequest(refresh_token=grant.refresh_token), timeout=60)
            )
            deadline = time.monotonic() + 30
            while listeners.gate.running < 1:  # the Refresh is in its handler, on the store
                assert time.monotonic() < deadline and not refresh.done()
                await asyncio.sleep(0.005)
            stopping = asyncio.ensure_future(app.stop())
            while not listeners.gate.refusing:
                await asyncio.sleep(0.005)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Verify(verify, timeout=30)
            assert reason_of(refused.value) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
            assert not stopping.done() and not refresh.done()
            redis_server.proc.send_signal(signal.SIGCONT)
            resumed = True
            refreshed = await refresh
            await stopping
        finally:
            if not resumed:
                redis_server.proc.send_signal(signal.SIGCONT)
            await admin.close()
            await public.close()
        assert refreshed.access_token and refreshed.refresh_token != grant.refresh_token
        assert listeners.gate.running == 0
