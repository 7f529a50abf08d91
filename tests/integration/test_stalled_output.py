"""A sidecar whose output reader stalls or goes away keeps serving and stops on SIGTERM.

Found on real runs: a harness stopped reading a sidecar's stderr; the audit lines filled the
64 KiB pipe, the event loop blocked in `write(2, ...)`, and the process then ignored SIGTERM
until it was killed by PID. A harness gone before the banner made the banner's `print` raise
BrokenPipeError, which ended the sidecar (exit 1, nothing closed). sidecar/log_writer.py says
what happens instead; these tests run the real process against real pipes.
"""

from __future__ import annotations

import fcntl
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from tests.integration.test_serve_process import BANNER, _env

F_GETPIPE_SZ = 1032  # Linux fcntl: a pipe's capacity in bytes
STALL_CALLS = 200
EXIT_BOUND_S = 20  # grace period 5 s plus the bounded final flush, with room for a loaded machine


def _popen(data_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"],
        env=_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _unread_bytes(pipe: Any) -> int:
    buf = bytearray(4)
    fcntl.ioctl(pipe.fileno(), termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


def test_a_stderr_nobody_reads_blocks_neither_calls_nor_the_stop(data_dir: Path) -> None:
    proc = _popen(data_dir)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        match = BANNER.search(proc.stdout.readline().decode())
        assert match is not None
        capacity = fcntl.fcntl(proc.stderr.fileno(), F_GETPIPE_SZ)
        request = auth_pb2.IssueRequest(subject="s" * 200, audience=["svc"])
        # Every Issue writes an audit line longer than its 200-byte subject. The pipe is full
        # once its unread bytes stop growing across STALL_CALLS answered calls (more than 40 KB
        # of lines it did not take). Before the fix the event loop blocked on the full pipe and
        # the next call ended DEADLINE_EXCEEDED.
        unread, same_since = -1, 0
        with grpc.insecure_channel(f"unix:{match.group(2)}") as admin:
            stub = auth_pb2_grpc.AuthServiceStub(admin)
            for _ in range(100 * capacity // 200):
                stub.Issue(request, timeout=10)
                now = _unread_bytes(proc.stderr)
                same_since = same_since + 1 if now == unread else 0
                unread = now
                if same_since == STALL_CALLS:
                    break
        assert same_since == STALL_CALLS, "the audit lines never filled the pipe"
        assert unread > capacity // 2  # full (the kernel leaves part of some pages unused)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=EXIT_BOUND_S)  # before the fix: no exit until SIGKILL
        assert proc.returncode == 0
        err = proc.stderr.read().decode()
        assert "Traceback" not in err
        assert "audit issue ok" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_a_stdout_closed_before_the_banner_does_not_end_the_sidecar(data_dir: Path) -> None:
    proc = _popen(data_dir)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the banner is written
        with grpc.insecure_channel(f"unix:{data_dir / 'run' / 'auth.sock'}") as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 60  # a bound for a hung start, not a speed check
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "never SERVING"
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass  # not listening yet
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=EXIT_BOUND_S)
        # Before the fix: exit 1 with a BrokenPipeError traceback from the banner's print.
        assert proc.returncode == 0, err
        assert b"Traceback" not in err
        assert b"stopped" in err
        assert not list(data_dir.rglob("*.sock"))  # stopped in order: the sockets are gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
