"""FakeWatchSidecar: a fake of OUR Watch protocol (auth.proto), driven by the test.

A real grpc.aio server on a Unix socket. `Watch` is served here exactly as auth.proto
specifies it (a `sync` first, numbered events in order, heartbeats carrying the latest
number, replay on resume within the epoch, `reset: true` otherwise), but the events are the
ones the test pushes (`revoke_token`, `retire_key`, ...), so a test controls the order and
timing of everything the interceptor sees. Verify and VerifyBatch are forwarded byte for byte
to a REAL sidecar and counted; nothing about verification is faked.

It exists because the sidecar's own Watch was being built at the same time (issue 15); the
end-to-end tests in test_watch_sidecar.py run against the real one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2

SERVICE = "authsidecar.v1.AuthService"
FORWARDED = ("Verify", "VerifyBatch")


@dataclass
class FakeWatchSidecar:
    target: str
    epoch: str = "epoch-1"
    heartbeat_interval_ms: int = 50
    heartbeats: bool = True  # False: the streams stay open but go silent
    refuse: grpc.StatusCode | None = None  # answer Watch with this status instead
    delay_s: float = 0.0  # added to every forwarded Verify / VerifyBatch
    reply_delay_s: float = 0.0  # added after the sidecar answered, before replying
    answered: int = 0  # forwarded calls the sidecar has answered
    sequence: int = 0  # the latest number assigned
    log: list[auth_pb2.WatchEvent] = field(default_factory=list)
    requests: list[auth_pb2.WatchRequest] = field(default_factory=list)
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    _streams: list[asyncio.Queue[auth_pb2.WatchEvent | None]] = field(default_factory=list)

    @property
    def subscribers(self) -> int:
        return len(self._streams)

    def _push(self, event: auth_pb2.WatchEvent) -> None:
        for queue in self._streams:
            queue.put_nowait(event)

    def _numbered(self, **oneof: Any) -> auth_pb2.WatchEvent:
        self.sequence += 1
        event = auth_pb2.WatchEvent(epoch=self.epoch, sequence=self.sequence, **oneof)
        self.log.append(event)
        self._push(event)
        return event

    def revoke_token(self, iss: str, jti: str) -> None:
        self._numbered(token_revoked=auth_pb2.TokenRevoked(iss=iss, jti=jti))

    def revoke_family(self, iss: str, sid: str) -> None:
        self._numbered(family_revoked=auth_pb2.FamilyRevoked(iss=iss, sid=sid))

    def retire_key(self, kid: str) -> None:
        self._numbered(key_retired=auth_pb2.KeyRetired(kid=kid))

    def reset_decisions(self) -> None:
        self._numbered(decisions_reset=auth_pb2.DecisionsReset())

    def send_raw(self, event: auth_pb2.WatchEvent) -> None:
        """Push a message as is (for contract violations such as a skipped number)."""
        self._push(event)

    def cut(self) -> None:
        """End every open stream with UNAVAILABLE (as a sidecar that drops a subscriber)."""
        for queue in self._streams:
            queue.put_nowait(None)

    def restart(self, epoch: str) -> None:
        """A new event log: what a restarted sidecar has (streams cut, numbering anew)."""
        self.cut()
        self.epoch, self.sequence, self.log = epoch, 0, []

    async def watch(
        self, request: auth_pb2.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[auth_pb2.WatchEvent]:
        self.requests.append(request)
        if self.refuse is not None:
            await context.abort(self.refuse, "refused by the test")
        resume = request.epoch == self.epoch and request.after_sequence <= self.sequence
        queue: asyncio.Queue[auth_pb2.WatchEvent | None] = asyncio.Queue()
        self._streams.append(queue)
        try:
            sync = auth_pb2.WatchSync(
                reset=not resume, heartbeat_interval_ms=self.heartbeat_interval_ms
            )
            # The position the stream continues from: the next event is `sequence + 1`.
            position = request.after_sequence if resume else self.sequence
            yield auth_pb2.WatchEvent(epoch=self.epoch, sequence=position, sync=sync)
            if resume:
                for event in self.log:
                    if event.sequence > request.after_sequence:
                        yield event
            while True:
                try:
                    async with asyncio.timeout(self.heartbeat_interval_ms / 1000):
                        pushed = await queue.get()
                except TimeoutError:
                    if self.heartbeats:
                        yield auth_pb2.WatchEvent(
                            epoch=self.epoch,
                            sequence=self.sequence,
                            heartbeat=auth_pb2.WatchHeartbeat(),
                        )
                    continue
                if pushed is None:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "cut by the test")
                yield pushed
        finally:
            self._streams.remove(queue)


@contextlib.asynccontextmanager
async def fake_watch_sidecar(upstream: str, socket_dir: Path) -> AsyncIterator[FakeWatchSidecar]:
    fake = FakeWatchSidecar(target=f"unix:{socket_dir / 'watch-fake.sock'}")
    channel = grpc.aio.insecure_channel(upstream)

    def forwarder(name: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        upstream_call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            f"/{SERVICE}/{name}"
        )

        async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            fake.attempts[name] += 1
            await asyncio.sleep(fake.delay_s)
            try:
                reply: bytes = await upstream_call(request, metadata=context.invocation_metadata())
            except grpc.aio.AioRpcError as error:
                # abort takes a tuple; the error's trailers are an aio Metadata object.
                trailers = tuple(error.trailing_metadata() or ())
                await context.abort(error.code(), error.details() or "", trailers)
            fake.answered += 1
            await asyncio.sleep(fake.reply_delay_s)
            return reply

        return grpc.unary_unary_rpc_method_handler(forward)

    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {m: forwarder(m) for m in FORWARDED}
    handlers["Watch"] = grpc.unary_stream_rpc_method_handler(
        fake.watch,
        request_deserializer=auth_pb2.WatchRequest.FromString,
        response_serializer=auth_pb2.WatchEvent.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(fake.target)
    await server.start()
    try:
        yield fake
    finally:
        fake.cut()
        await server.stop(None)
        await channel.close()
