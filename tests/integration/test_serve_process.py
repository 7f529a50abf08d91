"""`authsidecar` as an operator runs it: a real process, real signals, real exit codes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from tests.support.keys import rsa_key_of_size

BANNER = re.compile(r"authsidecar serving .* tcp=(\S+) admin=(\S+)")


@dataclass
class ServeProcess:
    proc: subprocess.Popen[str]
    tcp: str
    admin: str
    data_dir: Path


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}
    env.update(
        AUTHSIDECAR_DATA_DIR=str(data_dir),
        AUTHSIDECAR_LISTEN__TCP="127.0.0.1:0",
        AUTHSIDECAR_LISTEN__GRACE_PERIOD_S="5",
        # No drain here: these tests stop processes; test_drain.py covers the drain.
        AUTHSIDECAR_LISTEN__DRAIN_S="0",
    )
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _start(data_dir: Path, **extra: str) -> ServeProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"],
        env=_env(data_dir, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = BANNER.search(line)
    if match is None:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        assert proc.stdout is not None
        pytest.fail(f"no banner; stdout={line!r} stderr={err!r}")
    return ServeProcess(proc, match.group(1), f"unix:{match.group(2)}", data_dir)


def _stop(process: ServeProcess, sig: int = signal.SIGTERM) -> int:
    """Signal the process, collect its output (closing the pipes), return its exit code."""
    if process.proc.poll() is None:
        process.proc.send_signal(sig)
    process.proc.communicate(timeout=15)
    return process.proc.returncode


@pytest.fixture
def served(data_dir: Path) -> Iterator[ServeProcess]:
    process = _start(data_dir)
    yield process
    _stop(process, signal.SIGKILL)


def test_serve_drains_in_flight_calls_on_sigterm_and_exits_cleanly(served: ServeProcess) -> None:
    with grpc.insecure_channel(served.admin) as admin:
        grant = auth_pb2_grpc.AuthServiceStub(admin).Issue(
            auth_pb2.IssueRequest(subject="alice", audience=["svc"]), timeout=10
        )
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def load() -> None:
        with grpc.insecure_channel(served.tcp) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.Verify(auth_pb2.VerifyRequest(token=grant.access_token), timeout=5)
                    outcomes["OK"] += 1
                except grpc.RpcError as error:
                    outcomes[error.code().name] += 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 30  # a bound for a hung test, not a speed check
    while outcomes["OK"] < 20 and time.monotonic() < deadline:
        time.sleep(0.01)  # the load is under way before the stop: progress, not a fixed time
    ok_before = outcomes["OK"]
    started = time.monotonic()
    returncode = _stop(served)
    elapsed = time.monotonic() - started
    stop.set()
    for worker in workers:
        worker.join(timeout=10)
    assert returncode == 0
    assert elapsed < 5 + 3, "exit within the grace period"
    assert ok_before > 0
    # A call either completed or found the server stopping or gone (UNAVAILABLE); nothing
    # INTERNAL or DEADLINE_EXCEEDED, and never CANCELLED: grpc core cancels calls queued in
    # it when its shutdown begins (grpc/grpc#41785), so the stop closes the connections
    # before that (transport/drain.py).
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    # The sockets are cleaned up.
    assert not list(served.data_dir.rglob("*.sock"))


def test_health_is_serving_and_reflection_lists_the_services(served: ServeProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(served.tcp) as channel:
        # The typeshed stubs for these generated modules are incomplete: treat them as Any.
        health: Any = health_pb2_grpc.HealthStub(channel)
        for service in ("", "authsidecar.v1.AuthService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect: Any = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(reflect.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in answer.list_services_response.service}
        assert {"authsidecar.v1.AuthService", "grpc.health.v1.Health"} <= names


def test_token_commands_issue_verify_and_inspect(served: ServeProcess) -> None:
    env = _env(served.data_dir)
    issued = _cli("token", "issue", "--sub", "bob", "--aud", "svc", "--scope", "read", env=env)
    assert issued.returncode == 0, issued.stderr
    token = json.loads(issued.stdout)["access_token"]
    ok = _cli("token", "verify", token, "--scope", "read", "--target", served.tcp, env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sub"] == "bob"
    denied = _cli("token", "verify", token, "--scope", "admin", "--target", served.tcp, env=env)
    assert denied.returncode == 1
    assert "PERMISSION_DENIED SCOPE_MISSING" in denied.stderr
    inspected = _cli("token", "inspect", token, env=env)
    assert inspected.returncode == 0
    assert "UNVERIFIED" in inspected.stdout and '"typ": "at+jwt"' in inspected.stdout


def test_serve_refuses_a_bad_setting_by_name_without_traceback(data_dir: Path) -> None:
    result = _cli("serve", env=_env(data_dir, AUTHSIDECAR_TOKENS__ACCESS_TTL_S="soon"))
    assert result.returncode == 2
    assert "tokens.access_ttl_s" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_plaintext_tcp_beyond_loopback(data_dir: Path) -> None:
    result = _cli("serve", env=_env(data_dir, AUTHSIDECAR_LISTEN__TCP="0.0.0.0:7000"))
    assert result.returncode == 2
    assert "allow_non_loopback" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_weak_key_file_naming_it(data_dir: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    weak = data_dir / "weak.pem"
    weak.write_bytes(
        rsa_key_of_size(1024, "weak").private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = _cli("serve", env=_env(data_dir, AUTHSIDECAR_KEYS__FILES=str(weak)))
    assert result.returncode == 2
    assert "2048" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_missing_config_file(data_dir: Path) -> None:
    result = _cli("--config", str(data_dir / "nope.yaml"), "serve", env=_env(data_dir))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_generated_key_file_serves_and_is_published(data_dir: Path) -> None:
    key_file = data_dir / "signing.jwk.json"
    made = _cli("keys", "generate", "--alg", "RS256", "--out", str(key_file), env=_env(data_dir))
    assert made.returncode == 0, made.stderr
    kid = json.loads(made.stdout)["kid"]
    again = _cli("keys", "generate", "--out", str(key_file), env=_env(data_dir))
    assert again.returncode == 2, "never overwrites a key"
    process = _start(data_dir, AUTHSIDECAR_KEYS__FILES=str(key_file))
    try:
        with grpc.insecure_channel(process.tcp) as channel:
            jwks = auth_pb2_grpc.AuthServiceStub(channel).GetJwks(
                auth_pb2.GetJwksRequest(), timeout=5
            )
        keys = json.loads(jwks.jwks)["keys"]
        assert [(k["kid"], k["alg"]) for k in keys] == [(kid, "RS256")]
    finally:
        assert _stop(process) == 0


def test_serve_from_a_toml_config_file(data_dir: Path) -> None:
    config = data_dir / "authsidecar.toml"
    config.write_text(
        '[tokens]\nissuer = "https://auth.example.test"\n\n[store]\nbackend = "memory"\n'
    )
    process = _start(data_dir, AUTHSIDECAR_CONFIG=str(config))
    try:
        out = process.proc.stdout
        assert out is not None
        with grpc.insecure_channel(process.admin) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            grant = stub.Issue(auth_pb2.IssueRequest(subject="a", audience=["b"]), timeout=5)
            verified = stub.Verify(auth_pb2.VerifyRequest(token=grant.access_token), timeout=5)
        assert verified.iss == "https://auth.example.test"
    finally:
        assert _stop(process) == 0
