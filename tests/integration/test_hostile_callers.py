"""What a demanding caller or operator found from outside (probe of 2026-12-05), pinned.

Each case reached a traceback or a vague answer before: Issue claims with NaN (INTERNAL), a
VerifyStream caller that stops reading then leaves (a grpc traceback per stream in our log),
a config file whose top level is a list (a Python traceback), a data_dir or SQLite file that
cannot be used (a traceback, or STORE_UNAVAILABLE naming nothing). Real sockets and, for
start-up, the real `authsidecar serve` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from authsidecar.v1 import auth_pb2
from tests.support.jwks_server import LocalCa
from tests.support.sidecar import RunningSidecar, reason_of


def _assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
async def test_issue_claims_holding_nan_or_infinity_are_invalid_request_without_a_traceback(
    sidecar: RunningSidecar, caplog: pytest.LogCaptureFixture, number: float
) -> None:
    caplog.set_level(logging.WARNING)
    claims = struct_pb2.Struct()
    claims.update({"tenant": "t1", "nested": {"ratio": number}})
    request = auth_pb2.IssueRequest(subject="alice", audience=["svc-a"], claims=claims)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sidecar.admin.Issue(request)
    assert reason_of(refused.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert "NaN or Infinity" in (refused.value.details() or "")
    assert "serialize" not in (refused.value.details() or "")  # not the library's text
    _assert_no_traceback(caplog)
    # A finite number in the same place is issued as before.
    request.claims.update({"nested": {"ratio": 0.5}})
    await sidecar.admin.Issue(request)


async def test_a_stream_caller_that_stops_reading_then_leaves_costs_one_line_not_a_traceback(
    sidecar: RunningSidecar, caplog: pytest.LogCaptureFixture
) -> None:
    """The client writes until flow control stops it (it never reads the answers), then
    cancels; grpc's own write of the handler's next answer then fails. The sidecar must keep
    its log to at most one rate-limited line and keep serving."""
    caplog.set_level(logging.WARNING)
    issued = await sidecar.admin.Issue(auth_pb2.IssueRequest(subject="a", audience=["svc-a"]))
    batch = auth_pb2.VerifyBatchRequest(
        requests=[auth_pb2.VerifyRequest(token=issued.access_token)] * 50
    )
    for _ in range(3):
        call = sidecar.public.VerifyStream()
        for _ in range(5000):
            try:
                await asyncio.wait_for(call.write(batch), 2)
            except TimeoutError:
                break  # flow control: the sidecar is blocked writing answers nobody reads
        else:
            pytest.fail("writes never blocked: the stream is not flow-controlled")
        call.cancel()
    await asyncio.sleep(0.5)  # let the sidecar see each write fail
    _assert_no_traceback(caplog)
    notes = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(notes) <= 1, caplog.text
    assert all("VerifyStream" in r.getMessage() for r in notes)
    verified = await sidecar.public.Verify(auth_pb2.VerifyRequest(token=issued.access_token))
    assert verified.sub == "a"


def _serve_env(**env: str) -> dict[str, str]:
    """This process's environment without its AUTHSIDECAR_* settings, then no TCP listener,
    no drain, and `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}
    clean.update(AUTHSIDECAR_LISTEN__TCP="", AUTHSIDECAR_LISTEN__DRAIN_S="0")
    clean.update(env)
    return clean


def _serving(**env: str) -> subprocess.Popen[str]:
    """`sidecar serve` left running, its output piped (the caller stops it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve"],
        env=_serve_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _serve(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", *args],
        env=_serve_env(**env),
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line_exit_2(done: subprocess.CompletedProcess[str], *wanted: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in wanted:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    ("document", "kind"), [("- 1\n- 2\n", "a list"), ('"text"\n', "a string"), ("5\n", "a number")]
)
def test_a_config_file_whose_top_level_is_not_a_mapping_is_one_line_exit_2(
    data_dir: Path, document: str, kind: str
) -> None:
    config = data_dir / "sidecar.yaml"
    config.write_text(document, encoding="utf-8")
    done = _serve(data_dir, "--config", str(config), AUTHSIDECAR_DATA_DIR=str(data_dir / "d"))
    _one_line_exit_2(done, "sidecar.yaml", "top level must be a mapping", kind)
    assert not (data_dir / "d").exists()  # refused before anything was created


def test_a_data_dir_that_cannot_hold_the_dev_key_stops_start_up_naming_data_dir(
    data_dir: Path,
) -> None:
    not_a_directory = data_dir / "plain-file"
    not_a_directory.write_text("x", encoding="utf-8")
    done = _serve(data_dir, AUTHSIDECAR_DATA_DIR=str(not_a_directory))
    _one_line_exit_2(done, "setting data_dir", "plain-file", "Not a directory")


def test_a_sqlite_file_that_cannot_be_opened_stops_start_up_naming_the_setting(
    data_dir: Path,
) -> None:
    not_a_database = data_dir / "state.db"
    not_a_database.write_bytes(b"this is not an SQLite database file, not at all\n" * 4)
    done = _serve(
        data_dir,
        AUTHSIDECAR_DATA_DIR=str(data_dir / "d"),
        AUTHSIDECAR_STORE__SQLITE_PATH=str(not_a_database),
    )
    # The dev key's warning may come first; the refusal is the last line, and the only one
    # that is not a log line.
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("authsidecar: setting store.sqlite_path:"), done.stderr
    assert "state.db" in last
    assert "not a database" in last


def _wait_for_line(lines: list[str], text: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(text in line for line in lines):
            return True
        time.sleep(0.05)
    return False


def test_a_key_file_replaced_by_a_fifo_is_refused_and_neither_reload_nor_stop_hangs(
    data_dir: Path,
) -> None:
    """Opening a FIFO blocks until a writer comes: the reload's thread waited for ever, no
    later reload ran, and SIGTERM logged "stopped" but the process never exited."""
    key_file = data_dir / "signing.jwk.json"
    subprocess.run(
        [sys.executable, "-m", "sidecar", "keys", "generate", "--alg", "ES256", "--out",
         str(key_file)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    proc = _serving(
        AUTHSIDECAR_DATA_DIR=str(data_dir / "d"),
        AUTHSIDECAR_KEYS__FILES=str(key_file),
        AUTHSIDECAR_KEYS__RELOAD_INTERVAL_S="1",
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()  # blocks until the sidecar serves (or exits: "")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        assert banner.startswith("authsidecar serving"), banner
        key_file.unlink()
        os.mkfifo(key_file)
        assert _wait_for_line(lines, "not a regular file", 30), lines
        key_file.unlink()
        subprocess.run(
            [sys.executable, "-m", "sidecar", "keys", "generate", "--alg", "ES256", "--out",
             str(key_file)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        assert _wait_for_line(lines, "key set reloaded", 30), lines  # reloads go on
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
    assert not [line for line in lines if "Traceback" in line]


@pytest.mark.parametrize(
    "command",
    [
        ("keys", "init", "--dir", "{file}"),
        ("keys", "generate", "--alg", "ES256", "--out", "{file}/signing.jwk.json"),
        ("keys", "init", "--dir", "/proc/self/no-such-dir"),
    ],
)
def test_keys_commands_on_a_path_the_os_refuses_say_so_in_one_line_exit_2(
    data_dir: Path, command: tuple[str, ...]
) -> None:
    plain_file = data_dir / "plain-file"
    plain_file.write_text("x", encoding="utf-8")
    argv = [part.format(file=plain_file) for part in command]
    done = subprocess.run(
        [sys.executable, "-m", "sidecar", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    _one_line_exit_2(done, "choose a writable location")
    assert plain_file.read_text(encoding="utf-8") == "x"


@pytest.mark.parametrize("address", ["[::1:50051", "::1]:50051", "[]:50051", "[[::1]]:50051"])
def test_an_address_with_unbalanced_or_empty_brackets_is_not_host_port(
    data_dir: Path, address: str
) -> None:
    """ "[::1" used to lose a bracket and be refused as "not loopback", which it may well be."""
    done = _serve(
        data_dir, AUTHSIDECAR_DATA_DIR=str(data_dir / "d"), AUTHSIDECAR_LISTEN__TCP=address
    )
    _one_line_exit_2(done, "setting listen.tcp", "is not host:port")


def test_an_environment_list_not_written_in_json_names_the_variable_never_a_value(
    data_dir: Path,
) -> None:
    """pydantic-settings said only 'error parsing value for field "tokens" from source
    "EnvSettingsSource"'; the natural `a,b` for a list deserves the variable's name."""
    done = _serve(
        data_dir,
        AUTHSIDECAR_DATA_DIR=str(data_dir / "d"),
        AUTHSIDECAR_TOKENS__AUDIENCES="orders,billing",
        AUTHSIDECAR_TOKENS__ISSUER="urn:plain-value-not-json",
        AUTHSIDECAR_STORE__REDIS_URL="redis://:hunter2-secret@127.0.0.1:6379/0",
    )
    _one_line_exit_2(done, "setting tokens", "AUTHSIDECAR_TOKENS__AUDIENCES", "JSON")
    for value in ("orders,billing", "hunter2", "AUTHSIDECAR_TOKENS__ISSUER", "EnvSettingsSource"):
        assert value not in done.stderr


def test_redis_unreachable_at_start_names_the_setting_but_never_the_password(
    data_dir: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens there once closed
    done = _serve(
        data_dir,
        AUTHSIDECAR_DATA_DIR=str(data_dir / "d"),
        AUTHSIDECAR_STORE__BACKEND="redis",
        AUTHSIDECAR_STORE__REDIS_URL=f"redis://:hunter2-secret@127.0.0.1:{closed_port}/0",
        AUTHSIDECAR_STORE__REDIS_KEY_PREFIX="probe-unreachable",
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("authsidecar: STORE_UNAVAILABLE:"), done.stderr
    assert "store.redis_url" in last


class _TricklingHttps:
    """An HTTPS server that answers one byte a second, for ever: each read is within any
    per-operation timeout, the whole response never ends."""

    def __init__(self, ca: LocalCa) -> None:
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(ca.cert_file, ca.key_file)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), self._tls.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100_000:
                if self._stop.wait(1):
                    return
                tls.send(bytes([byte]))

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


def test_a_jwks_server_that_trickles_bytes_neither_holds_the_fetch_nor_the_stop(
    data_dir: Path,
) -> None:
    """Each read arrived within `timeout_s`, so the worker thread read for hours after the
    fetch had timed out; asyncio waits for that thread at exit: 'stopped', then no exit."""
    ca = LocalCa.create(data_dir)
    server = _TricklingHttps(ca)
    issuer = {
        "issuer": "https://idp.example",
        "audiences": ["api"],
        "jwks_url": f"https://127.0.0.1:{server.port}/jwks.json",
        "ca_file": str(ca.ca_file),
        "timeout_s": 1,
    }
    proc = _serving(
        AUTHSIDECAR_DATA_DIR=str(data_dir / "d"), AUTHSIDECAR_ISSUERS=json.dumps([issuer])
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # after the first fetch gave up (timed out)
        assert banner.startswith("authsidecar serving"), banner
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        server.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _, stderr = proc.communicate()
    assert "timed out" in stderr
    assert "Traceback" not in stderr
