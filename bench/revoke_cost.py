"""Redis commands and CPU per Revoke on one topology, counted (issue 16).

    python -m bench.revoke_cost [--topology cluster3] [--revokes 3000] [--concurrency 8]
                                [--ref REF] [--sidecars 3]

Starts the topology (bench/topologies.py's builders), `--sidecars` sidecar processes on one
key prefix (from this tree, or from `--ref` exported with git archive), revokes `--revokes`
pre-minted ES256 access tokens split over them (`--concurrency` calls in flight each, from
this process), waits until every sidecar refuses the last one, and prints per Revoke: the
calls of every Redis command on every node (`INFO commandstats` before/after), the CPU of
the Redis processes and of the sidecars. Counts, unlike CPU, do not depend on the machine's
load: they say what each Revoke makes the fleet ask of Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2, auth_pb2_grpc
from bench import procs
from bench.tokens import make_key
from bench.topologies import Deployment, _client, _deploy, _sidecar

REVOKE = "/authsidecar.v1.AuthService/Revoke"


def _commandstats(port: int) -> dict[str, int]:
    client = _client(port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def _sample(deployment: Deployment, sidecars: list[procs.Server]) -> dict[str, Any]:
    return {
        "at": time.monotonic(),
        "stats": {port: _commandstats(port) for port in deployment.primaries},
        "redis_cpu": sum(procs.cpu_of(pid) for pid in deployment.processes.values()),
        "sidecar_cpu": sum(s.cpu_s() for s in sidecars),
    }


async def _revoke_all(sidecars: list[procs.Server], tokens: list[str], concurrency: int) -> None:
    channels = [grpc.aio.insecure_channel(s.target("uds")) for s in sidecars]
    try:
        stubs = [auth_pb2_grpc.AuthServiceStub(ch) for ch in channels]
        share = len(tokens) // len(stubs)

        async def worker(stub: Any, queue: list[str]) -> None:
            while queue:
                await stub.Revoke(auth_pb2.RevokeRequest(token=queue.pop()), timeout=10)

        tasks = []
        for i, stub in enumerate(stubs):
            queue = tokens[i * share : (i + 1) * share]
            tasks += [worker(stub, queue) for _ in range(concurrency)]
        await asyncio.gather(*tasks)
    finally:
        for channel in channels:
            await channel.close()


async def _heard_everywhere(sidecars: list[procs.Server], token: str) -> None:
    """Until every sidecar refuses `token` (its revocation came through the feed)."""
    channels = [grpc.aio.insecure_channel(s.target("uds")) for s in sidecars]
    try:
        for channel in channels:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            while True:
                try:
                    await stub.Verify(auth_pb2.VerifyRequest(token=token), timeout=10)
                except grpc.aio.AioRpcError:  # refused: revoked here too
                    break
                await asyncio.sleep(0.01)
    finally:
        for channel in channels:
            await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", default="cluster3")
    parser.add_argument("--revokes", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sidecars", type=int, default=3)
    parser.add_argument("--ref", default="", help="run the sidecars from this git ref")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="revcost-", dir="/tmp") as tmp:
        work = Path(tmp)
        root = procs.ROOT
        if args.ref:
            root = work / "tree"
            print(f"sidecars from {procs.export_tree(args.ref, root)}")
        warm = 30 * args.sidecars
        minted = make_key(work, "ES256", args.revokes + warm)
        deployment = _deploy(args.topology, work)
        sidecars: list[procs.Server] = []
        try:
            prefix = f"revcost-{uuid.uuid4().hex[:8]}"
            for i in range(args.sidecars):
                sidecars.append(_sidecar(work, i, minted.key_path, prefix, deployment, root=root))
            tokens = minted.tokens
            asyncio.run(_revoke_all(sidecars, tokens[:warm], 2))
            asyncio.run(_heard_everywhere(sidecars, tokens[warm - 1]))
            before = _sample(deployment, sidecars)
            asyncio.run(_revoke_all(sidecars, tokens[warm:], args.concurrency))
            asyncio.run(_heard_everywhere(sidecars, tokens[-1]))
            after = _sample(deployment, sidecars)
        finally:
            for server in sidecars:
                server.stop()
            deployment.stop()
    n = args.revokes
    window = after["at"] - before["at"]
    print(
        f"{args.topology}: {n} revokes over {args.sidecars} sidecars x {args.concurrency} in"
        f" flight in {window:.2f} s ({n / window:.0f}/s); load average before"
        f" {' '.join(f'{x:.2f}' for x in load_before)}, after"
        f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    totals: dict[str, int] = {}
    for port, stats in after["stats"].items():
        old = before["stats"][port]
        for name, calls in stats.items():
            delta = calls - old.get(name, 0)
            if delta and name not in ("info",):
                totals[name] = totals.get(name, 0) + delta
    all_calls = sum(totals.values())
    print(f"  Redis commands per Revoke (all nodes): {all_calls / n:.2f}")
    for name, calls in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"    {name:24} {calls / n:7.3f}")
    redis_ms = (after["redis_cpu"] - before["redis_cpu"]) / n * 1e3
    print(f"  Redis CPU ms per Revoke:   {redis_ms:.3f}")
    sidecar_ms = (after["sidecar_cpu"] - before["sidecar_cpu"]) / n * 1e3
    print(f"  sidecars CPU ms per Revoke: {sidecar_ms:.3f}")


if __name__ == "__main__":
    main()
