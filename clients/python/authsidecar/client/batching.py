"""Verifies that wait at the same time, gathered into one VerifyBatch call (issue 7).

A service that authenticates every incoming call sends one Verify per call, and under load
most of the work on both ends is per RPC rather than per token. A batcher collects the
verifies that are waiting at the same moment, sends them as one VerifyBatch, and gives each
caller its own item, so `batcher.verify(...)` can replace `client.verify(...)`:

* Each token gets the same result as with Verify: `VerifiedClaims`, or the same
  `AuthClientError` subclass with the same `.code` and `.reason` (`errors.REASON_CODES`).
  Only the message is generic, because the reason is the contract.
* If the whole call fails (UNAVAILABLE after grpc's retries, DEADLINE_EXCEEDED, a batch over
  the sidecar's cap), every caller in that batch gets its own copy of that error.
* Each caller keeps its own deadline (`timeout_s`, by default the client's). The RPC gets
  the latest deadline in its batch. A caller whose deadline passes first gets
  DEADLINE_EXCEEDED, as it would from Verify.

A batch is sent as soon as `max_batch` callers are waiting, or `max_delay_s` after its first
caller arrived. The asyncio default delay is 0, which means "at the next turn of the event
loop": that turn gathers every caller that became ready during the current one. Batches
therefore grow with load on their own, and a lone caller waits for nothing. Threads have no
such turn, so `VerifyBatcher` waits 1 ms. Both take `max_in_flight`: then a batch is sent at
once whenever fewer than that many batches are in flight, so a lone caller waits for nothing,
and the callers that arrive while batches are in flight go out together when one comes back
(the server interceptors use `max_in_flight=1`). Without it, any number of batches may be in
flight.
`close()` sends whatever is waiting and then waits for the batches in flight. The client
belongs to the caller: close it after the batcher.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import grpc

from authsidecar.client.aio import AsyncAuthClient
from authsidecar.client.client import AuthClient
from authsidecar.client.errors import AuthClientError, error_for, from_rpc_error
from authsidecar.client.models import VerifiedClaims, VerifyItem, batch_request, batch_results
from authsidecar.v1 import auth_pb2

# The sidecar's documented default cap (auth.proto, `tokens.max_verify_batch`). A default
# sidecar refuses a larger batch as a whole.
MAX_BATCH = 256
DEFAULT_MAX_BATCH = 100
# Threads have no "next turn of the loop". 1 ms is what a lone caller pays in the worst case.
DEFAULT_THREAD_DELAY_S = 0.001

Outcome = VerifiedClaims | AuthClientError


class _Settable(Protocol):
    """What asyncio and concurrent futures share, so one function settles both."""

    def done(self) -> bool: ...
    def set_result(self, result: VerifiedClaims) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...


F = TypeVar("F", bound=_Settable)


@dataclass(slots=True)
class _Waiter(Generic[F]):
    item: VerifyItem
    future: F
    deadline: float  # on the clock of the batcher (the loop's, or time.monotonic)


def _check(max_batch: int, max_delay_s: float) -> None:
    if not 1 <= max_batch <= MAX_BATCH:
        raise ValueError(f"max_batch must be 1..{MAX_BATCH} (the sidecar's default cap)")
    if max_delay_s < 0:
        raise ValueError("max_delay_s must be >= 0")


def _item(token: str, audience: str, required_scopes: Sequence[str]) -> VerifyItem:
    return VerifyItem(token, audience, tuple(required_scopes))


def _copies(
    error: AuthClientError, count: int, cause: BaseException | None = None
) -> list[Outcome]:
    """One instance per waiter: an exception raised in many tasks or threads would gather
    all their tracebacks on itself."""
    copies: list[Outcome] = []
    for _ in range(count):
        copy = type(error)(error.code, error.reason, error.message)
        copy.__cause__ = cause
        copies.append(copy)
    return copies


def _unexpected(error: BaseException, count: int) -> list[Outcome]:
    """Anything that is not a gRPC failure still ends every waiter, as an AuthClientError."""
    return _copies(error_for(grpc.StatusCode.UNKNOWN, "", type(error).__name__), count, error)


def _deadline_exceeded() -> AuthClientError:
    """What Verify raises when its deadline passes."""
    return error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "", "Deadline Exceeded")


def _settle(waiters: Sequence[_Waiter[F]], outcomes: Sequence[Outcome]) -> None:
    """Waiters that are already done (cancelled, timed out) are skipped: nobody is hurt."""
    for waiter, outcome in zip(waiters, outcomes, strict=True):
        if waiter.future.done():
            continue
        if isinstance(outcome, AuthClientError):
            waiter.future.set_exception(outcome)
        else:
            waiter.future.set_result(outcome)


class AsyncVerifyBatcher:
    """`verify` with the meaning of `AsyncAuthClient.verify`, one VerifyBatch per gathering.

    Use it from the loop of its client. Cancelling a caller drops that caller's item (or its
    answer, if the batch was already sent) and leaves the others alone.
    """

    def __init__(
        self,
        client: AsyncAuthClient,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay_s: float = 0.0,
        max_in_flight: int | None = None,
    ) -> None:
        """
        Args:
            client: sends the batches; the batcher never closes it.
            max_batch: send as soon as this many callers wait (1..256).
            max_delay_s: send at the latest this long after a batch's first caller; 0 means
                at the next turn of the event loop.
            max_in_flight: when set, a batch goes out at the next loop turn while fewer
                than this many batches are in flight, and otherwise when one comes back,
                `max_batch` callers wait, or (if > 0) `max_delay_s` passed: callers that
                arrive over many loop turns while the sidecar is busy share one call.
        """
        _check(max_batch, max_delay_s)
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._client = client
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_in_flight = max_in_flight
        self._waiting: list[_Waiter[asyncio.Future[VerifiedClaims]]] = []
        self._timer: asyncio.Handle | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._closed = False

    async def verify(
        self,
        token: str,
        *,
        audience: str = "",
        required_scopes: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> VerifiedClaims:
        """The token's claims, or the error `AsyncAuthClient.verify` would raise."""
        if self._closed:
            raise RuntimeError("AsyncVerifyBatcher is closed")
        loop = asyncio.get_running_loop()
        timeout = self._client.timeout_s if timeout_s is None else timeout_s
        future: asyncio.Future[VerifiedClaims] = loop.create_future()
        waiter = _Waiter(_item(token, audience, required_scopes), future, loop.time() + timeout)
        self._waiting.append(waiter)
        if len(self._waiting) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._schedule(loop)
        try:
            async with asyncio.timeout_at(waiter.deadline):
                return await future
        except TimeoutError:
            raise _deadline_exceeded() from None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        delay = self.max_delay_s
        if self.max_in_flight is not None and len(self._in_flight) >= self.max_in_flight:
            if delay:  # otherwise `_landed` sends it
                self._timer = loop.call_later(delay, self._flush)
        elif delay and self.max_in_flight is None:
            self._timer = loop.call_later(delay, self._flush)
        else:
            self._timer = loop.call_soon(self._flush)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        room = self.max_in_flight is not None and len(self._in_flight) < self.max_in_flight
        if room and self._waiting:
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [w for w in self._waiting if not w.future.done()]
        self._waiting = []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._landed)

    async def _send(self, batch: list[_Waiter[asyncio.Future[VerifiedClaims]]]) -> None:
        """Every waiter of `batch` ends with a result or an error. Raises nothing but its own
        cancellation (the loop shutting down), and only after ending the waiters."""
        timeout_s = max(0.0, max(w.deadline for w in batch) - asyncio.get_running_loop().time())
        outcomes: Sequence[Outcome]
        try:
            items = [w.item for w in batch]
            outcomes = await self._client.verify_batch(items, timeout_s=timeout_s)
        except AuthClientError as error:
            outcomes = _copies(error, len(batch))
        except asyncio.CancelledError:  # the loop is going away: end the waiters, not hang
            _settle(
                batch, _copies(error_for(grpc.StatusCode.CANCELLED, "", "cancelled"), len(batch))
            )
            raise
        except Exception as error:
            outcomes = _unexpected(error, len(batch))
        _settle(batch, outcomes)

    @property
    def client(self) -> AsyncAuthClient:
        """The client that sends the batches (the batcher never closes it)."""
        return self._client

    async def close(self) -> None:
        """Send what waits, then wait for the batches in flight (their deadlines bound this)."""
        self._closed = True
        self._flush()
        if self._in_flight:
            # asyncio.wait, not gather: cancelling close() must not cancel the batches.
            await asyncio.wait(set(self._in_flight))

    async def __aenter__(self) -> AsyncVerifyBatcher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


@dataclass(slots=True)
class _Batch:
    waiters: list[_Waiter[Future[VerifiedClaims]]] = field(default_factory=list)
    sealed: bool = False


class VerifyBatcher:
    """`verify` with the meaning of `AuthClient.verify`, for threads; thread-safe.

    The caller that opens a batch sends it (there is no sender thread to start or stop) and
    then waits for its own answer, like every other caller. The RPC is non-blocking, so no
    caller waits past its own deadline for batch-mates that have longer ones.
    """

    def __init__(
        self,
        client: AuthClient,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_delay_s: float = DEFAULT_THREAD_DELAY_S,
        max_in_flight: int | None = None,
    ) -> None:
        """Arguments as for `AsyncVerifyBatcher`. With `max_delay_s=0` only callers that
        arrive together with the `max_batch`-th one share a call.

        `max_in_flight`: when set, a batch is sent at once while fewer than this many batches
        are in flight (a lone caller waits for nothing), and otherwise when one comes back,
        `max_batch` callers wait, or `max_delay_s` passed, whichever is first. None: the
        batch always waits `max_delay_s` for company.
        """
        _check(max_batch, max_delay_s)
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._client = client
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_in_flight = max_in_flight
        self._sending = 0  # batches sealed and not yet answered
        self._lock = threading.Lock()
        # Signalled when a batch is sealed (its opener sends it) or answered (for close()).
        self._changed = threading.Condition(self._lock)
        self._open: _Batch | None = None
        self._unfinished = 0  # batches opened and not yet answered
        self._closed = False

    def verify(
        self,
        token: str,
        *,
        audience: str = "",
        required_scopes: Sequence[str] = (),
        timeout_s: float | None = None,
    ) -> VerifiedClaims:
        """The token's claims, or the error `AuthClient.verify` would raise."""
        timeout = self._client.timeout_s if timeout_s is None else timeout_s
        future: Future[VerifiedClaims] = Future()
        waiter = _Waiter(
            _item(token, audience, required_scopes), future, time.monotonic() + timeout
        )
        with self._lock:
            if self._closed:
                raise RuntimeError("VerifyBatcher is closed")
            batch = self._open
            opener = batch is None
            if batch is None:
                batch = self._open = _Batch()
                self._unfinished += 1
            batch.waiters.append(waiter)
            if len(batch.waiters) >= self.max_batch:
                self._seal(batch)
            elif opener:
                mine = batch
                self._changed.wait_for(
                    lambda: mine.sealed or self._has_room(), timeout=self.max_delay_s
                )
                self._seal(batch)
        if opener:
            self._send(batch)
        try:
            return future.result(timeout=max(0.0, waiter.deadline - time.monotonic()))
        except TimeoutError:
            raise _deadline_exceeded() from None

    @property
    def client(self) -> AuthClient:
        """The client that sends the batches (the batcher never closes it)."""
        return self._client

    def _has_room(self) -> bool:
        """With the lock held: may a batch go out now rather than wait for company?"""
        return self.max_in_flight is not None and self._sending < self.max_in_flight

    def _seal(self, batch: _Batch) -> None:
        """With the lock held. A sealed batch takes no more callers; its opener sends it."""
        if not batch.sealed:
            batch.sealed = True
            self._sending += 1
            if self._open is batch:
                self._open = None
            self._changed.notify_all()

    def _send(self, batch: _Batch) -> None:
        waiters = batch.waiters
        timeout_s = max(0.0, max(w.deadline for w in waiters) - time.monotonic())
        request = batch_request([w.item for w in waiters], "", ())
        try:
            call = self._client._verify_batch_future(request, timeout_s)
        except Exception as error:
            self._answer(waiters, _unexpected(error, len(waiters)))
            return
        call.add_done_callback(lambda done: self._answer(waiters, self._outcomes(done, waiters)))

    @staticmethod
    def _outcomes(
        call: grpc.Future[auth_pb2.VerifyBatchResponse],
        waiters: Sequence[_Waiter[Future[VerifiedClaims]]],
    ) -> Sequence[Outcome]:
        """Runs on grpc's callback thread; never raises."""
        try:
            return batch_results(call.result(), len(waiters))
        except grpc.RpcError as error:
            return _copies(from_rpc_error(error), len(waiters))
        except AuthClientError as error:  # a reply that does not answer every item
            return _copies(error, len(waiters))
        except Exception as error:
            return _unexpected(error, len(waiters))

    def _answer(
        self, waiters: Sequence[_Waiter[Future[VerifiedClaims]]], outcomes: Sequence[Outcome]
    ) -> None:
        try:
            _settle(waiters, outcomes)
        finally:
            with self._lock:
                self._unfinished -= 1
                self._sending -= 1
                self._changed.notify_all()

    def close(self) -> None:
        """Send what waits, then wait for the batches in flight (their deadlines bound this)."""
        with self._lock:
            self._closed = True
            if self._open is not None:
                self._seal(self._open)
            self._changed.wait_for(lambda: self._unfinished == 0)

    def __enter__(self) -> VerifyBatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
