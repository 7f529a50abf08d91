"""Revocation propagation delay between sidecar processes sharing one Redis (issue 3).

    .venv/bin/python bench/revocation_propagation.py [--count 200] [--redis redis://127.0.0.1:6379/0]

For each of `count` access tokens: Issue at A, check it verifies at B, then start polling
Verify at B and send Revoke to A; the delay is from just before Revoke is sent to the first
TOKEN_REVOKED answer from B. The poll of the store is set to 60 s, so every refusal seen here
came through the push feed. Keys live under a fresh prefix, deleted at the end.

`one_delay` is the measurement itself, for any number of watching sidecars: the topology
bench (bench/topologies.py) runs it against three sidecars on each Redis deployment.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authsidecar.v1 import auth_pb2  # noqa: E402  (needs the path above)
from tests.support.fleet import fleet  # noqa: E402
from tests.support.redis import REDIS_URL, delete_prefix, unique_prefix  # noqa: E402

if TYPE_CHECKING:  # the async stub type exists only in the generated .pyi
    from authsidecar.v1.auth_pb2_grpc import AuthServiceAsyncStub as Stub


async def _refused_at(stub: Stub, token: str) -> float:
    request = auth_pb2.VerifyRequest(token=token)
    while True:
        try:
            await stub.Verify(request, timeout=5)
        except grpc.aio.AioRpcError:  # the refusal is the event we wait for
            return time.perf_counter()


async def one_delay(revoker: Stub, revoker_admin: Stub, watchers: Sequence[Stub]) -> float:
    """Issue a token at the revoker (admin socket), check every watcher accepts it, then poll
    Verify at every watcher and Revoke at the revoker: seconds from just before Revoke is
    sent until the last watcher refuses (an upper bound: it includes a Verify round trip)."""
    grant = await revoker_admin.Issue(
        auth_pb2.IssueRequest(subject="bench", audience=["svc"]), timeout=5
    )
    for stub in watchers:
        await stub.Verify(auth_pb2.VerifyRequest(token=grant.access_token), timeout=5)
    polls = [asyncio.create_task(_refused_at(stub, grant.access_token)) for stub in watchers]
    await asyncio.sleep(0)  # every watcher's first Verify is in flight
    start = time.perf_counter()
    await revoker.Revoke(auth_pb2.RevokeRequest(token=grant.access_token), timeout=5)
    try:
        refused = await asyncio.wait_for(asyncio.gather(*polls), 5)
    finally:
        for poll in polls:
            poll.cancel()
    return max(refused) - start


async def main(count: int, url: str) -> None:
    prefix = unique_prefix()
    try:
        async with fleet(2, url, prefix, STORE__SYNC_INTERVAL_S="60") as f:
            a, b = f.sidecars
            delays = [await one_delay(a.stub, a.admin_stub, [b.stub]) for _ in range(count)]
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
