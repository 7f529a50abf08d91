"""Refresh throughput through gRPC against a sidecar process on Redis (issue 3).

    .venv/bin/python bench/refresh_redis.py [--concurrency 16] [--seconds 10] [--sidecars 1]

The sidecars are separate `python -m sidecar serve` processes (store.backend: redis); this
process is only the load generator. Each of `concurrency` workers owns one refresh family and
rotates it in a loop (every call is a real rotation: Lua script, two ES256 signatures), spread
round-robin over the sidecars. Keys live under a fresh prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authsidecar.v1 import auth_pb2  # noqa: E402  (needs the path above)
from tests.support.fleet import fleet  # noqa: E402
from tests.support.redis import REDIS_URL, delete_prefix, unique_prefix  # noqa: E402


async def main(concurrency: int, seconds: float, sidecars: int, url: str) -> None:
    prefix = unique_prefix()
    try:
        async with fleet(sidecars, url, prefix) as f:
            issue = auth_pb2.IssueRequest(subject="bench", audience=["svc"], refresh_token=True)
            grants = [await f.sidecars[0].admin_stub.Issue(issue) for _ in range(concurrency)]
            counts = [0] * concurrency
            deadline = time.perf_counter() + seconds

            async def worker(i: int) -> None:
                token = grants[i].refresh_token
                stub = f.sidecars[i % sidecars].stub
                while time.perf_counter() < deadline:
                    reply = await stub.Refresh(auth_pb2.RefreshRequest(refresh_token=token))
                    token = reply.refresh_token
                    counts[i] += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(concurrency)))
            elapsed = time.perf_counter() - start
    finally:
        delete_prefix(url, prefix)
    total = sum(counts)
    print(
        f"Refresh via gRPC on Redis: {total / elapsed:.0f} calls/s"
        f" ({total} calls in {elapsed:.1f} s,"
        f" concurrency {concurrency}, {sidecars} sidecar process(es))"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sidecars", type=int, default=1)
    parser.add_argument("--redis", default=REDIS_URL)
    args = parser.parse_args()
    asyncio.run(main(args.concurrency, args.seconds, args.sidecars, args.redis))
