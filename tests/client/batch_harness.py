"""Both batchers behind one face, with their VerifyBatch calls counted by a client interceptor.

The interceptor sits on the batcher's own channel (a real grpc interceptor, no mock), so it
sees each logical call once, with its number of items; grpc's retries happen below it. Sync
callers are threads that start together at a barrier. They run off the event loop, because
the sidecar under test runs on that loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc

from authsidecar.client import (
    AsyncAuthClient,
    AsyncVerifyBatcher,
    AuthClient,
    AuthClientError,
    VerifiedClaims,
    VerifyBatcher,
)
from authsidecar.client._transport import channel_options

VERIFY_BATCH = "/authsidecar.v1.AuthService/VerifyBatch"
VERIFY = "/authsidecar.v1.AuthService/Verify"

# What a caller ends with: the claims, or the error's class, code and reason.
Outcome = VerifiedClaims | tuple[type[AuthClientError], grpc.StatusCode, str]


@dataclass(frozen=True)
class Ask:
    """One verify, asked of the unary client and of the batcher alike."""

    token: str
    audience: str = ""
    scopes: tuple[str, ...] = ()
    timeout_s: float | None = None


def outcome_of(call: Callable[[], VerifiedClaims]) -> Outcome:
    try:
        return call()
    except AuthClientError as error:
        return type(error), error.code, error.reason


async def async_outcome_of(call: Awaitable[VerifiedClaims]) -> Outcome:
    try:
        return await call
    except AuthClientError as error:
        return type(error), error.code, error.reason


async def unary_outcomes(client: AsyncAuthClient, asks: Sequence[Ask]) -> list[Outcome]:
    """The reference: what the unary Verify says for each ask."""
    return [
        await async_outcome_of(
            client.verify(
                a.token, audience=a.audience, required_scopes=a.scopes, timeout_s=a.timeout_s
            )
        )
        for a in asks
    ]


@dataclass
class Counted:
    batch_sizes: list[int] = field(default_factory=list)
    verifies: int = 0

    def record(self, method: str | bytes, request: Any) -> None:
        name = method.decode() if isinstance(method, bytes) else method
        if name == VERIFY_BATCH:
            self.batch_sizes.append(len(request.requests))
        elif name == VERIFY:
            self.verifies += 1


class _SyncCounter(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, counted: Counted) -> None:
        self._counted = counted

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        self._counted.record(client_call_details.method, request)
        return continuation(client_call_details, request)


class _AioCounter(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, counted: Counted) -> None:
        self._counted = counted

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        self._counted.record(client_call_details.method, request)
        return await continuation(client_call_details, request)


class Batching:
    """A counted batcher, sync or asyncio, over its own channel with the client's retries."""

    def __init__(
        self,
        aio: bool,
        target: str,
        *,
        timeout_s: float = 5.0,
        initial_backoff_s: float = 0.01,
        **batcher_options: Any,
    ) -> None:
        self.aio = aio
        self.counted = Counted()
        options = channel_options(4, initial_backoff_s)
        self.batcher: AsyncVerifyBatcher | VerifyBatcher
        if aio:
            self._aio_channel = grpc.aio.insecure_channel(
                target, options=options, interceptors=[_AioCounter(self.counted)]
            )
            client = AsyncAuthClient(channel=self._aio_channel, timeout_s=timeout_s)
            self.batcher = AsyncVerifyBatcher(client, **batcher_options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
            intercepted = grpc.intercept_channel(self._channel, _SyncCounter(self.counted))
            sync_client = AuthClient(channel=intercepted, timeout_s=timeout_s)
            self.batcher = VerifyBatcher(sync_client, **batcher_options)

    async def verify_all(self, asks: Sequence[Ask]) -> list[Outcome]:
        """Every ask at once: one task each, or one thread each."""
        batcher = self.batcher
        if isinstance(batcher, AsyncVerifyBatcher):
            return list(await asyncio.gather(*(self._one_async(batcher, a) for a in asks)))
        return await asyncio.to_thread(_threads, batcher, asks)

    @staticmethod
    async def _one_async(batcher: AsyncVerifyBatcher, a: Ask) -> Outcome:
        return await async_outcome_of(
            batcher.verify(
                a.token, audience=a.audience, required_scopes=a.scopes, timeout_s=a.timeout_s
            )
        )

    async def close(self) -> None:
        batcher = self.batcher
        if isinstance(batcher, AsyncVerifyBatcher):
            await batcher.close()
            await self._aio_channel.close()
        else:
            await asyncio.to_thread(batcher.close)
            self._channel.close()


def _threads(batcher: VerifyBatcher, asks: Sequence[Ask]) -> list[Outcome]:
    start = threading.Barrier(len(asks))

    def one(a: Ask) -> Outcome:
        start.wait(timeout=10)
        return outcome_of(
            lambda: batcher.verify(
                a.token, audience=a.audience, required_scopes=a.scopes, timeout_s=a.timeout_s
            )
        )

    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        return list(pool.map(one, asks))
