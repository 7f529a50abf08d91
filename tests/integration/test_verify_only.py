"""A verify-only sidecar (issue 14): no key of its own, external issuers only.

`keys.files: []` with `keys.dev_generate: false` and `issuers` configured starts without a
signing key; Verify accepts the issuers' tokens, and Issue and Refresh answer
FAILED_PRECONDITION / NO_SIGNING_KEY (the RPC exists; this sidecar's state rules it out).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import pytest

from authsidecar.v1 import auth_pb2
from sidecar.clock import FixedClock
from sidecar.config import load_settings
from sidecar.errors import ConfigError
from tests.support.jwks_server import ExternalIssuer
from tests.support.sidecar import reason_of, running_sidecar

AUDIENCE = "api://orders"
VERIFY_ONLY_KEYS = {"files": [], "dev_generate": False}


def _issuer(data_dir: Path) -> tuple[ExternalIssuer, dict[str, object]]:
    idp = ExternalIssuer()
    idp.add_key("idp-1")
    jwks = data_dir / "idp.jwks.json"
    jwks.write_text(json.dumps(idp.jwks()))
    return idp, {"issuer": idp.issuer, "audiences": [AUDIENCE], "jwks_file": str(jwks)}


async def test_verify_only_sidecar_verifies_external_tokens_and_refuses_to_mint(
    data_dir: Path,
) -> None:
    idp, issuer = _issuer(data_dir)
    async with running_sidecar(
        data_dir, clock=FixedClock(time.time()), keys=VERIFY_ONLY_KEYS, issuers=[issuer]
    ) as sc:
        assert sc.app.service.ring.signing_key is None
        assert not (data_dir / "keys").exists(), "no dev key is generated"
        verified = await sc.public.Verify(auth_pb2.VerifyRequest(token=idp.token("idp-1")))
        assert (verified.iss, verified.sub) == (idp.issuer, "user-1")
        # A token claiming our own issuer: we hold no key for it.
        ours = idp.token("idp-1", issuer=sc.settings.tokens.issuer, audience="svc")
        with pytest.raises(grpc.RpcError) as foreign:
            await sc.public.Verify(auth_pb2.VerifyRequest(token=ours))
        assert reason_of(foreign.value) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_UNKNOWN")
        assert json.loads((await sc.public.GetJwks(auth_pb2.GetJwksRequest())).jwks) == {"keys": []}
        with pytest.raises(grpc.RpcError) as issue:
            await sc.admin.Issue(auth_pb2.IssueRequest(subject="a", audience=["b"]))
        assert reason_of(issue.value) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_SIGNING_KEY")
        with pytest.raises(grpc.RpcError) as refresh:
            await sc.public.Refresh(auth_pb2.RefreshRequest(refresh_token=idp.token("idp-1")))
        assert reason_of(refresh.value) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NO_SIGNING_KEY",
        )


def test_no_key_and_no_issuer_is_refused_at_config_time_saying_what_to_set(
    data_dir: Path,
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, data_dir=data_dir, keys=VERIFY_ONLY_KEYS)
    message = str(caught.value)
    assert "\n" not in message
    assert "keys.dev_generate is false" in message and "issuers" in message
