"""Key rotation on a running sidecar: real gRPC load, real files, real SIGHUP (issue 5)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import signal
import time
from pathlib import Path

import grpc
import pytest

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from sidecar.keys.keyset import write_manifest
from sidecar.keys.ring import KeyRing
from tests.integration.test_serve_process import _start, _stop
from tests.support.keys import rsa_key_of_size, write_jwk_file
from tests.support.polling import eventually
from tests.support.sidecar import RunningSidecar, reason_of, running_sidecar, short_tmpdir

POLL_S = 0.05


def _kid(token: str) -> str:
    header = token.split(".")[0]
    kid: str = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
    return kid


def _signing_kid(ring: KeyRing) -> str | None:
    return ring.signing_key.kid if ring.signing_key is not None else None


def _key_dir(data_dir: Path, alg: str, kid: str) -> Path:
    directory = data_dir / "keyset"
    directory.mkdir()
    write_jwk_file(directory, alg, kid)
    write_manifest(directory, kid, 0)
    return directory


async def _issue(sc: RunningSidecar) -> str:
    grant = await sc.admin.Issue(auth_pb2.IssueRequest(subject="alice", audience=["svc-a"]))
    return grant.access_token


async def test_verify_never_fails_while_the_key_set_rotates_twice(data_dir: Path) -> None:
    keys = _key_dir(data_dir, "ES256", "k1")
    settings = {"directory": str(keys), "reload_interval_s": POLL_S}
    async with running_sidecar(data_dir, keys=settings, tokens={"audiences": ["svc-a"]}) as sc:
        pool: list[str] = [await _issue(sc)]
        retiring: set[str] = set()
        failures: list[tuple[str, str]] = []
        verified: dict[str, int] = {}
        rounds = [0, 0, 0, 0]
        stop = asyncio.Event()

        async def issuer() -> None:
            while not stop.is_set():
                pool.append(await _issue(sc))
                del pool[:-40]
                await asyncio.sleep(0.005)

        async def verifier(worker: int) -> None:
            stub = (sc.public, sc.tcp)[worker % 2]
            while not stop.is_set():
                live = [t for t in pool if _kid(t) not in retiring]
                token = random.choice(live)
                try:
                    await stub.Verify(auth_pb2.VerifyRequest(token=token, audience="svc-a"))
                    verified[_kid(token)] = verified.get(_kid(token), 0) + 1
                except grpc.aio.AioRpcError as error:
                    failures.append((_kid(token), reason_of(error)[1]))
                rounds[worker] += 1

        async def progressed(what: str, calls: int = 2) -> None:
            """Every verifier finished `calls` more verifies (by count, not by time). After
            `retiring` grew, two: none is still sending a token of the key about to go."""
            start = list(rounds)

            def done() -> bool:
                return all(r >= s + calls for r, s in zip(rounds, start, strict=True))

            await eventually(done, what)

        service = sc.app.service
        tasks = [asyncio.create_task(issuer())] + [
            asyncio.create_task(verifier(i)) for i in range(len(rounds))
        ]
        old_token = ""
        for old, new, alg in (("k1", "k2", "PS256"), ("k2", "k3", "EdDSA")):
            write_jwk_file(keys, alg, new)  # 1. publish: verifies, does not sign
            await eventually(lambda: new in service.ring, f"{new} published")  # noqa: B023
            await progressed(f"verifies while {new} is published, not signing", calls=5)
            assert service.ring.signing_key is not None
            assert service.ring.signing_key.kid == old
            write_manifest(keys, new, 0)  # 2. promote
            await eventually(
                lambda: _signing_kid(service.ring) == new,  # noqa: B023
                f"{new} promoted",
            )
            old_token = next(t for t in pool if _kid(t) == old)
            await eventually(lambda: verified.get(new, 0) >= 3, f"{new}'s tokens verified")  # noqa: B023
            # Promoted away, not yet retired: the old key's tokens still verify.
            await sc.public.Verify(auth_pb2.VerifyRequest(token=old_token))
            retiring.add(old)
            await progressed("verifies since the retirement began")
            (keys / f"{old}.jwk.json").unlink()  # 3. retire
            await eventually(lambda: old not in service.ring, f"{old} retired")  # noqa: B023
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sc.public.Verify(auth_pb2.VerifyRequest(token=old_token))
            assert reason_of(refused.value) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_UNKNOWN")
        await progressed("verifies after the last retirement", calls=5)
        stop.set()
        await asyncio.gather(*tasks)
        assert failures == []
        assert set(verified) == {"k1", "k2", "k3"}, verified
        assert sum(verified.values()) > 200, verified
        watcher = sc.app.key_watcher
        assert watcher is not None
        assert (watcher.status.reloads, watcher.status.failures) == (6, 0)


async def test_broken_key_set_is_refused_and_the_last_good_one_stays(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = _key_dir(data_dir, "ES256", "k1")
    # No polling: each step below is one reload_now(), so no in-between state is read.
    settings = {"directory": str(keys), "reload_interval_s": 0}
    caplog.set_level(logging.INFO, logger="authsidecar.keys")
    async with running_sidecar(data_dir, keys=settings, tokens={"audiences": ["svc-a"]}) as sc:
        token = await _issue(sc)
        watcher = sc.app.key_watcher
        assert watcher is not None
        version = sc.app.service.ring.version
        numbers = rsa_key_of_size(1024).public_key().public_numbers()
        n = base64.urlsafe_b64encode(numbers.n.to_bytes(128, "big")).decode().rstrip("=")
        weak = {"kty": "RSA", "kid": "weak", "alg": "RS256", "n": n, "e": "AQAB"}
        broken = (
            ("bad.jwk.json", "{not json", "bad.jwk.json: not valid JSON"),
            ("bad.jwk.json", json.dumps(weak), "RSA key is 1024 bits"),
            ("bad.jwk.json", None, None),
            ("keyset.json", '{"signing_kid": "nope"}', "signing key 'nope' is not in the key ring"),
            ("keyset.json", '{"signing_kid": "k1", "extra": 1}', 'only "signing_kid"'),
        )
        failures = 0
        for name, content, message in broken:
            if content is None:
                (keys / name).unlink()
            else:
                (keys / name).write_text(content)
            assert not watcher.reload_now()
            assert not watcher.reload_now()  # unchanged input: not retried, not logged again
            failures += message is not None
            assert watcher.status.failures == failures
            assert message is None or message in (watcher.status.last_error or "")
            assert sc.app.service.ring.version == version
            await sc.public.Verify(auth_pb2.VerifyRequest(token=token, audience="svc-a"))
            await sc.admin.Issue(auth_pb2.IssueRequest(subject="bob", audience=["svc-a"]))
        refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(refusals) == 4, refusals
        assert all(m.startswith(f"key reload refused, keeping key set {version}") for m in refusals)
        write_manifest(keys, "k1", 0)
        assert not watcher.reload_now()
        assert watcher.status.healthy
        assert (watcher.status.reloads, sc.app.service.ring.version) == (0, version)


async def test_reload_of_an_emptied_key_directory_is_refused(data_dir: Path) -> None:
    keys = _key_dir(data_dir, "ES256", "k1")
    settings = {"directory": str(keys), "reload_interval_s": POLL_S}
    async with running_sidecar(data_dir, keys=settings) as sc:
        watcher = sc.app.key_watcher
        assert watcher is not None
        (keys / "k1.jwk.json").unlink()
        await eventually(lambda: watcher.status.failures == 1, "refusal")
        assert "no keys found" in (watcher.status.last_error or "")
        assert "k1" in sc.app.service.ring


def test_sighup_reloads_the_key_directory_without_polling() -> None:
    with short_tmpdir() as data_dir:
        keys = _key_dir(data_dir, "ES256", "k1")
        served = _start(
            data_dir,
            AUTHSIDECAR_KEYS__DIRECTORY=str(keys),
            AUTHSIDECAR_KEYS__RELOAD_INTERVAL_S="0",
        )
        try:
            with grpc.insecure_channel(served.tcp) as channel:
                stub = auth_pb2_grpc.AuthServiceStub(channel)

                def kids() -> list[str]:
                    jwks = json.loads(stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=5).jwks)
                    return sorted(key["kid"] for key in jwks["keys"])

                assert kids() == ["k1"]
                write_jwk_file(keys, "EdDSA", "k2")
                time.sleep(0.3)
                assert kids() == ["k1"], "polling is off: nothing changes before SIGHUP"
                served.proc.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 10
                while kids() != ["k1", "k2"]:
                    assert time.monotonic() < deadline, "SIGHUP did not reload the keys"
                    time.sleep(0.05)
        finally:
            assert _stop(served) == 0
