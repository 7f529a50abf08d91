"""Revocation propagation delay between two sidecar processes sharing one Redis (issue 3).

    .venv/bin/python bench/revocation_propagation.py [--count 200] [--redis redis://127.0.0.1:6379/0]

For each of `count` access tokens: Issue at A, check it verifies at B, then start polling
Verify at B and send Revoke to A; the delay is from just before Revoke is sent to the first
TOKEN_REVOKED answer from B. The poll of the store is set to 60 s, so every refusal seen here
came through the push feed. Keys live under a fresh prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authsidecar.v1 import auth_pb2  # noqa: E402  (needs the path above)
from tests.support.fleet import SidecarProcess, fleet  # noqa: E402
from tests.support.redis import REDIS_URL, delete_prefix, unique_prefix  # noqa: E402


async def _refused_at(b: SidecarProcess, token: str) -> float:
    request = auth_pb2.VerifyRequest(token=token)
    while True:
        try:
            await b.stub.Verify(request, timeout=5)
        except grpc.aio.AioRpcError:  # the refusal is the event we wait for
            return time.perf_counter()


async def main(count: int, url: str) -> None:
    prefix = unique_prefix()
    try:
        async with fleet(2, url, prefix, STORE__SYNC_INTERVAL_S="60") as f:
            a, b = f.sidecars
            delays = []
            for _ in range(count):
                grant = await a.admin_stub.Issue(
                    auth_pb2.IssueRequest(subject="bench", audience=["svc"]), timeout=5
                )
                await b.stub.Verify(auth_pb2.VerifyRequest(token=grant.access_token), timeout=5)
                watcher = asyncio.create_task(_refused_at(b, grant.access_token))
                await asyncio.sleep(0)  # the watcher's first Verify is in flight
                start = time.perf_counter()
                await a.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
                delays.append(await asyncio.wait_for(watcher, 5) - start)
    finally:
        delete_prefix(url, prefix)
    ms = sorted(d * 1000 for d in delays)
    print(
        f"revocation propagation A->B over {len(ms)} revocations:"
        f" median {statistics.median(ms):.2f} ms,"
        f" p95 {ms[int(len(ms) * 0.95) - 1]:.2f} ms, max {ms[-1]:.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--redis", default=REDIS_URL)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.redis))
