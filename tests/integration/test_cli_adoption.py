"""The CLI as a new user types it (issue 14): options after the subcommand, targets that do
not depend on the working directory, `--output token`, numbers as numbers, one-line errors
for a port in use and for an unknown setting, and the first key of a key directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_serve_process import ServeProcess, _env, _start, _stop


@pytest.fixture
def served(data_dir: Path) -> Iterator[ServeProcess]:
    process = _start(data_dir)
    yield process
    _stop(process, signal.SIGKILL)


def _cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _bare_env(**extra: str) -> dict[str, str]:
    """No AUTHSIDECAR_* at all: what a user's shell has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSIDECAR_")}
    env.update(extra)
    return env


def test_serve_help_lists_config_and_config_is_accepted_after_the_subcommand(
    data_dir: Path,
) -> None:
    helped = _cli("serve", "--help", env=_bare_env())
    assert helped.returncode == 0 and "--config FILE" in helped.stdout
    config = data_dir / "sidecar.yaml"
    config.write_text('tokens: {issuer: "https://after.example.test"}\nstore: {backend: memory}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--config", str(config)],
        env=_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "issuer=https://after.example.test" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_token_issue_output_token_prints_only_the_token_and_json_numbers_are_numbers(
    served: ServeProcess, tmp_path: Path
) -> None:
    # From another directory, with the addresses in the environment: nothing cwd-relative.
    env = _bare_env(AUTHSIDECAR_ADMIN_ADDR=served.admin, AUTHSIDECAR_ADDR=served.tcp)
    args = ("token", "issue", "--sub", "bob", "--aud", "svc", "--claims", '{"level": 3}')
    bare = _cli(*args, "--output", "token", env=env, cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    (token,) = bare.stdout.splitlines()
    assert token.count(".") == 2 and token == token.strip()
    issued = json.loads(_cli(*args, env=env, cwd=tmp_path).stdout)
    assert type(issued["expires_in"]) is int and issued["expires_in"] > 0
    verified = _cli("token", "verify", token, env=env, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    out = json.loads(verified.stdout)
    assert out["sub"] == "bob"
    for name in ("exp", "iat", "nbf"):
        assert type(out[name]) is int, name
        assert type(out["claims"][name]) is int, name
        assert out["claims"][name] == out[name]
    assert type(out["claims"]["level"]) is int


def test_token_commands_never_call_into_the_current_directory_and_say_how_to_point_elsewhere(
    served: ServeProcess, tmp_path: Path
) -> None:
    issued = _cli("token", "issue", "--sub", "bob", env=_bare_env(), cwd=tmp_path)
    assert issued.returncode == 1
    (line,) = issued.stderr.splitlines()
    assert "no admin socket at" in line and "--target" in line and "AUTHSIDECAR_ADMIN_ADDR" in line
    # --target wins over everything, wherever the command runs.
    ok = _cli(
        "token",
        "issue",
        "--sub",
        "bob",
        "--aud",
        "svc",
        "--target",
        served.admin,
        env=_bare_env(),
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    # Nothing listening at the target: the one line names it and how to call elsewhere.
    dead = _cli("token", "verify", "x.y.z", "--target", "unix:/nonexistent/s.sock", env=_bare_env())
    assert dead.returncode == 1
    (line,) = dead.stderr.splitlines()
    assert line.startswith("authsidecar: UNAVAILABLE") and "unix:/nonexistent/s.sock" in line
    assert "AUTHSIDECAR_ADDR" in line


def test_port_in_use_is_one_line_saying_in_use_before_any_key_is_generated(
    data_dir: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli("serve", env=_env(data_dir, AUTHSIDECAR_LISTEN__TCP=f"127.0.0.1:{port}"))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()  # no grpc C-core line before it
    assert "listen.tcp" in line and f"127.0.0.1:{port} is already in use" in line
    assert not (data_dir / "keys").exists(), "no dev key generated for a sidecar that cannot start"


def test_unknown_setting_names_the_nearest_valid_one_and_all_errors_fit_one_line(
    data_dir: Path,
) -> None:
    config = data_dir / "typo.yaml"
    config.write_text("tokens:\n  acces_ttl_s: 60\n  leeway_s: soon\nlisten: {tcp: nowhere}\n")
    result = _cli("serve", "--config", str(config), env=_bare_env())
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "unknown setting tokens.acces_ttl_s (did you mean tokens.access_ttl_s?)" in line
    assert "setting tokens.leeway_s:" in line and "setting listen.tcp:" in line
    assert "Extra inputs" not in line


def test_keys_init_makes_the_first_key_and_rotate_on_an_empty_directory_says_so(
    data_dir: Path,
) -> None:
    directory = data_dir / "keyset"
    env = _bare_env()
    empty = _cli("keys", "rotate", "--dir", str(directory), env=env)
    assert empty.returncode == 2
    assert f"authsidecar keys init --dir {directory}" in empty.stderr
    made = _cli("keys", "init", "--dir", str(directory), "--alg", "ES256", env=env)
    assert made.returncode == 0, made.stderr
    view = json.loads(made.stdout)
    assert view["kids"] == [view["created"]] and view["signing_kid"] == view["created"]
    assert directory.stat().st_mode & 0o777 == 0o700
    again = _cli("keys", "init", "--dir", str(directory), env=env)
    assert again.returncode == 2 and "keys rotate" in again.stderr
    # The directory serves as keys.directory, signing with the key init made.
    process = _start(data_dir, AUTHSIDECAR_KEYS__DIRECTORY=str(directory))
    try:
        assert process.proc.poll() is None
    finally:
        assert _stop(process) == 0


def test_keys_retire_refuses_before_the_old_tokens_expired_and_force_overrides(
    data_dir: Path,
) -> None:
    """The wait of docs/keys.md step 3 comes from the configured token lifetimes."""
    directory = data_dir / "keyset"
    env = _bare_env()
    made = _cli("keys", "init", "--dir", str(directory), "--kid", "old", env=env)
    assert made.returncode == 0, made.stderr
    assert _cli("keys", "rotate", "--dir", str(directory), "--kid", "new", env=env).returncode == 0
    promoted = _cli("keys", "promote", "--dir", str(directory), "--kid", "new", env=env)
    assert promoted.returncode == 0, promoted.stderr
    retire = ("keys", "retire", "--dir", str(directory), "--kid", "old")
    # Defaults: max(max_access_ttl_s 3600, refresh_ttl_s 86400) + leeway_s 30.
    early = _cli(*retire, env=env)
    assert early.returncode == 2
    assert "tokens live up to 86430s" in early.stderr and "--force" in early.stderr
    assert (directory / "old.jwk.json").exists()
    config = data_dir / "short.yaml"
    config.write_text(
        "tokens:\n  refresh_ttl_s: 60\n  family_ttl_s: 60\n  access_ttl_s: 60\n"
        "  max_access_ttl_s: 60\n"
    )
    shorter = _cli(*retire, "--config", str(config), env=env)
    assert shorter.returncode == 2 and "tokens live up to 90s" in shorter.stderr
    forced = _cli(*retire, "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["kids"] == ["new"]
