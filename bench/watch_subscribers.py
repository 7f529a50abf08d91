"""Memory of idle Watch subscriptions at one sidecar process (issue 15).

    .venv/bin/python bench/watch_subscribers.py [--subscribers 1000] [--channels 1000]
    .venv/bin/python bench/watch_subscribers.py --bare     # the same streams, no sidecar code

Starts one `python -m sidecar serve` (memory store), warms it up (one Issue, Verify, Revoke
and Watch), reads its RSS, then opens `subscribers` Watch streams spread over `channels`
client channels (one channel = one HTTP/2 connection, as one interceptor process would
hold), waits for every `sync` and a few heartbeats, and reads the RSS again. The client
side reads every stream all the time, so the subscriptions are idle, not stalled. At the
end one Revoke is sent and the time until every subscriber received its TokenRevoked is
reported (fan-out in one process, on a shared machine: an indication, not a target).

`--bare` runs the same measurement against a bare grpc.aio server whose Watch handler only
yields a sync and then a heartbeat a second (no event log, no call layers): the floor that
any server-streaming call costs in grpc.aio, to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from authsidecar.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402  (needs the path above)
from tests.support.fleet import start_sidecar  # noqa: E402

HEARTBEAT_MS = 1000


def cpu_s(pid: int) -> float:
    """utime + stime of the process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Subscriber:
    def __init__(self, stub: auth_pb2_grpc.AuthServiceAsyncStub) -> None:
        self.call = stub.Watch(auth_pb2.WatchRequest())
        self.synced = asyncio.Event()
        self.heartbeats = 0
        self.revoked_at: float | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.call:
            kind = message.WhichOneof("event")
            if kind == "sync":
                self.synced.set()
            elif kind == "heartbeat":
                self.heartbeats += 1
            elif kind == "token_revoked" and self.revoked_at is None:
                self.revoked_at = time.perf_counter()


async def _settle(pid: int) -> int:
    """RSS after the allocator settles: the smallest of a few reads a heartbeat apart."""
    reads = []
    for _ in range(3):
        await asyncio.sleep(HEARTBEAT_MS / 1000)
        reads.append(rss_bytes(pid))
    return min(reads)


async def _bare_watch(
    request: auth_pb2.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[auth_pb2.WatchEvent]:
    sync = auth_pb2.WatchSync(reset=True, heartbeat_interval_ms=HEARTBEAT_MS)
    yield auth_pb2.WatchEvent(epoch="e" * 32, sync=sync)
    while True:
        await asyncio.sleep(HEARTBEAT_MS / 1000)
        yield auth_pb2.WatchEvent(epoch="e" * 32, heartbeat=auth_pb2.WatchHeartbeat())


async def serve_bare() -> None:
    server = grpc.aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        _bare_watch,
        request_deserializer=auth_pb2.WatchRequest.FromString,
        response_serializer=auth_pb2.WatchEvent.SerializeToString,
    )
    service = grpc.method_handlers_generic_handler("authsidecar.v1.AuthService", {"Watch": handler})
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"bare tcp=127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


async def bare(subscribers: int, channel_count: int) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-bare", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    target = (await proc.stdout.readline()).decode().split("tcp=")[1].strip()
    channels = [grpc.aio.insecure_channel(target) for _ in range(channel_count)]
    try:
        stubs = [auth_pb2_grpc.AuthServiceStub(channel) for channel in channels]
        warm = Subscriber(stubs[0])
        await warm.synced.wait()
        before = await _settle(proc.pid)
        subs = [Subscriber(stubs[i % channel_count]) for i in range(subscribers)]
        await asyncio.wait_for(asyncio.gather(*(s.synced.wait() for s in subs)), 120)
        await asyncio.sleep(3 * HEARTBEAT_MS / 1000)
        after = await _settle(proc.pid)
        delta = after - before
        print(
            f"bare grpc.aio: {subscribers} idle streams over {channel_count} channel(s): "
            f"server RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB, "
            f"+{delta / 2**20:.1f} MiB ({delta / subscribers / 1024:.1f} KiB per stream)"
        )
    finally:
        for channel in channels:
            await channel.close()
        proc.kill()
        await proc.wait()


async def main(subscribers: int, channel_count: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="ws-", dir="/tmp"))
    env = {
        "AUTHSIDECAR_STORE__BACKEND": "memory",
        "AUTHSIDECAR_WATCH__HEARTBEAT_INTERVAL_MS": str(HEARTBEAT_MS),
        "AUTHSIDECAR_WATCH__MAX_SUBSCRIBERS": str(max(subscribers + 10, 100)),
    }
    sidecar = await start_sidecar(root, env)
    channels: list[grpc.aio.Channel] = []
    try:
        admin = sidecar.admin_stub
        grant = await admin.Issue(auth_pb2.IssueRequest(subject="bench", audience=["svc"]))
        warm = Subscriber(sidecar.stub)
        await warm.synced.wait()
        await sidecar.stub.Verify(auth_pb2.VerifyRequest(token=grant.access_token))
        before = await _settle(sidecar.proc.pid)
        channels = [grpc.aio.insecure_channel(sidecar.tcp) for _ in range(channel_count)]
        stubs = [auth_pb2_grpc.AuthServiceStub(channel) for channel in channels]
        subs = [Subscriber(stubs[i % channel_count]) for i in range(subscribers)]
        await asyncio.wait_for(asyncio.gather(*(s.synced.wait() for s in subs)), 120)
        await asyncio.sleep(3 * HEARTBEAT_MS / 1000)
        cpu_start, wall_start = cpu_s(sidecar.proc.pid), time.monotonic()
        after = await _settle(sidecar.proc.pid)
        idle_cpu = (cpu_s(sidecar.proc.pid) - cpu_start) / (time.monotonic() - wall_start)
        beats = min(s.heartbeats for s in subs)
        start = time.perf_counter()
        await sidecar.stub.Revoke(auth_pb2.RevokeRequest(token=grant.access_token))
        deadline = time.monotonic() + 60
        while any(s.revoked_at is None for s in subs) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        received = [s.revoked_at for s in subs if s.revoked_at is not None]
        delta = after - before
        print(
            f"{subscribers} idle Watch subscriptions over {channel_count} channel(s): "
            f"sidecar RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB, "
            f"+{delta / 2**20:.1f} MiB ({delta / subscribers / 1024:.1f} KiB per subscription); "
            f"every stream had >= {beats} heartbeats; sidecar CPU while idle "
            f"{idle_cpu * 100:.1f}% of a core (heartbeats every {HEARTBEAT_MS} ms)"
        )
        if received:
            print(
                f"one Revoke reached {len(received)}/{subscribers} subscribers; last after "
                f"{(max(received) - start) * 1000:.1f} ms from sending Revoke"
            )
        for sub in [*subs, warm]:
            sub.call.cancel()
    finally:
        for channel in channels:
            await channel.close()
        await sidecar.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=1000)
    parser.add_argument("--bare", action="store_true", help="a bare grpc.aio server instead")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        asyncio.run(serve_bare())
    elif args.bare:
        asyncio.run(bare(args.subscribers, args.channels))
    else:
        asyncio.run(main(args.subscribers, args.channels))
