"""CPU per revocation event of the Watch fan-out, at each end (issue 15).

    .venv/bin/python bench/watch_fanout.py sidecar [--subscribers 50] [--revokes 600]
    .venv/bin/python bench/watch_fanout.py callee [--subscribers 10] [--revokes 600]
    .venv/bin/python bench/watch_fanout.py callee --bare     # grpc.aio readers, no client code

One `python -m sidecar serve` (memory store, heartbeats every second), `--subscribers` Watch
streams each on its own channel (one HTTP/2 connection each, as one interceptor's client
holds), then `--revokes` Revokes one after the other (10 ms apart), each one event on every
stream. Printed: CPU per Revoke, from getrusage / /proc, over the Revokes only.

sidecar  the sidecar process's CPU; the streams are bare grpc.aio readers in this process.
         Run with 0 subscribers too: the difference over the subscribers is the fan-out's
         cost per subscriber per event.
callee   this process's CPU, where the streams are `AsyncAuthServerInterceptor`s (each
         with its own `AsyncAuthClient`: the watcher, the WatchState, the decision cache)
         or, with `--bare`, plain grpc.aio readers; the Revokes come from another process,
         so only the reading and applying is counted.

For A/B runs, run it from each tree (`git archive REV`), as bench/propagation.py's runs are.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authsidecar.client import AsyncAuthClient, AsyncAuthServerInterceptor  # noqa: E402
from authsidecar.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402
from bench.watch_subscribers import Subscriber, cpu_s  # noqa: E402
from tests.support.fleet import SidecarProcess, start_sidecar  # noqa: E402

ENV = {"AUTHSIDECAR_STORE__BACKEND": "memory", "AUTHSIDECAR_WATCH__HEARTBEAT_INTERVAL_MS": "1000"}
WARM_REVOKES = 5
GAP_S = 0.01
# The Revokes of the `callee` mode, from a process of their own (a token a line on stdin).
REVOKER = """
import sys, time, grpc
from authsidecar.v1 import auth_pb2, auth_pb2_grpc
stub = auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(sys.argv[1]))
for line in sys.stdin:
    stub.Revoke(auth_pb2.RevokeRequest(token=line.strip()))
    time.sleep(float(sys.argv[2]))
"""


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _subscribe(sidecar: SidecarProcess, n: int, bare: bool) -> list[object]:
    """`n` streams, each on its own channel, current before this returns."""
    if bare:
        channels = [grpc.aio.insecure_channel(sidecar.tcp) for _ in range(n)]
        subs = [Subscriber(auth_pb2_grpc.AuthServiceStub(c)) for c in channels]
        await asyncio.wait_for(asyncio.gather(*(s.synced.wait() for s in subs)), 60)
        return [*channels, *subs]
    clients = [AsyncAuthClient(sidecar.tcp) for _ in range(n)]
    interceptors = [AsyncAuthServerInterceptor(c) for c in clients]
    deadline = time.monotonic() + 60
    while not all(i.stats().current for i in interceptors):
        if time.monotonic() > deadline:
            raise RuntimeError("the watchers did not become current")
        await asyncio.sleep(0.05)
    return [*clients, *interceptors]


async def run(mode: str, n: int, revokes: int, bare: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="wf-", dir="/tmp"))
    env = {
        "AUTHSIDECAR_STORE__BACKEND": "memory",
        "AUTHSIDECAR_WATCH__HEARTBEAT_INTERVAL_MS": "1000",
    }
    sidecar = await start_sidecar(root, env)
    held: list[object] = []
    try:
        admin = sidecar.admin_stub
        tokens = []
        for _ in range(revokes + WARM_REVOKES):
            grant = await admin.Issue(auth_pb2.IssueRequest(subject="bench", audience=["svc"]))
            tokens.append(grant.access_token)
        held = await _subscribe(sidecar, n, bare or mode == "sidecar")
        for token in tokens[:WARM_REVOKES]:
            await sidecar.stub.Revoke(auth_pb2.RevokeRequest(token=token))
        await asyncio.sleep(0.5)
        if mode == "sidecar":
            before = cpu_s(sidecar.proc.pid)
            for token in tokens[WARM_REVOKES:]:
                await sidecar.stub.Revoke(auth_pb2.RevokeRequest(token=token))
                await asyncio.sleep(GAP_S)
            await asyncio.sleep(0.2)
            spent, whose = cpu_s(sidecar.proc.pid) - before, "the sidecar's"
        else:
            revoker = await asyncio.create_subprocess_exec(
                sys.executable, "-c", REVOKER, sidecar.tcp, str(GAP_S),
                stdin=asyncio.subprocess.PIPE,
            )  # fmt: skip
            before = _self_cpu_s()
            await revoker.communicate("\n".join(tokens[WARM_REVOKES:]).encode() + b"\n")
            await asyncio.sleep(0.2)
            spent, whose = _self_cpu_s() - before, "this process's"
        readers = "bare grpc.aio readers" if bare or mode == "sidecar" else "interceptors"
        print(
            json.dumps(
                {
                    "mode": mode,
                    "subscribers": n,
                    "readers": readers,
                    "revokes": revokes,
                    "cpu_us_per_revoke": round(spent / revokes * 1e6),
                    "whose": whose,
                }
            )
        )
    finally:
        for item in reversed(held):
            close = getattr(item, "aclose", None) or getattr(item, "close", None)
            call = getattr(item, "call", None)
            if call is not None:
                call.cancel()
            elif close is not None:
                result = close()
                if asyncio.iscoroutine(result):
                    await result
        await sidecar.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("sidecar", "callee"))
    parser.add_argument("--subscribers", type=int)
    parser.add_argument("--revokes", type=int, default=600)
    parser.add_argument("--bare", action="store_true", help="callee: grpc.aio readers only")
    args = parser.parse_args()
    count = (
        args.subscribers if args.subscribers is not None else (50 if args.mode == "sidecar" else 10)
    )
    asyncio.run(run(args.mode, count, args.revokes, args.bare))
