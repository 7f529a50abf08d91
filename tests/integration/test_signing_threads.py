"""`tokens.signing_threads` through the real app: Issue and Refresh sign on the pool, the
tokens they return verify, and stopping the app stops the threads (tokens/signing.py)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from authsidecar.v1 import auth_pb2
from sidecar.config import load_settings
from sidecar.errors import ConfigError
from sidecar.tokens.signing import THREAD_NAME_PREFIX
from tests.support.sidecar import running_sidecar


def _our_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)}


async def test_rsa_issue_and_refresh_sign_on_the_pool_and_stop_closes_it(data_dir: Path) -> None:
    before = _our_threads()
    async with running_sidecar(
        data_dir,
        keys={"dev_alg": "RS256"},
        tokens={"signing_threads": 2, "default_audience": ["svc"]},
    ) as sidecar:
        assert sidecar.app.signer is not None and sidecar.app.signer.threads == 2
        issue = auth_pb2.IssueRequest(subject="alice", scope="read", refresh_token=True)
        grants = await asyncio.gather(*(sidecar.admin.Issue(issue) for _ in range(8)))
        for grant in grants:
            refreshed = await sidecar.public.Refresh(
                auth_pb2.RefreshRequest(refresh_token=grant.refresh_token)
            )
            for token in (grant.access_token, refreshed.access_token):
                verified = await sidecar.public.Verify(
                    auth_pb2.VerifyRequest(token=token, audience="svc")
                )
                assert verified.sub == "alice"
        started = _our_threads() - before
        assert started, "RS256 signatures did not go to the signing threads"
    assert not any(thread.is_alive() for thread in started)


async def test_zero_signing_threads_signs_in_place(data_dir: Path) -> None:
    before = _our_threads()
    async with running_sidecar(
        data_dir, keys={"dev_alg": "RS256"}, tokens={"signing_threads": 0}
    ) as sidecar:
        grant = await sidecar.admin.Issue(
            auth_pb2.IssueRequest(subject="alice", audience=["svc"], refresh_token=True)
        )
        await sidecar.public.Refresh(auth_pb2.RefreshRequest(refresh_token=grant.refresh_token))
        assert not _our_threads() - before


def test_signing_threads_default_to_in_place() -> None:
    assert load_settings(None).tokens.signing_threads == 0


@pytest.mark.parametrize("value", [-1, 33])
def test_signing_threads_out_of_range_name_the_setting(value: int) -> None:
    with pytest.raises(ConfigError, match=r"tokens\.signing_threads"):
        load_settings(None, tokens={"signing_threads": value})


def test_signing_threads_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSIDECAR_TOKENS__SIGNING_THREADS", "3")
    assert load_settings(None).tokens.signing_threads == 3
