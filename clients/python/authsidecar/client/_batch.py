"""Verifies that wait at the same time, gathered into one VerifyBatch call (issue 7).

A service that authenticates every incoming call sends one Verify per call, and under load
most of the work on both ends is per RPC rather than per token. A batcher collects the
verifies that are waiting at the same moment, sends them as one VerifyBatch, and gives each
caller its own item, so `batcher.verify(...)` can replace `client.verify(...)`:

* Each token gets the same result as with Verify: `VerifiedClaims`, or the same
  `AuthClientError` subclass with the same `.code` and `.reason` (`_errors.REASON_CODES`).
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
flight. With it, the asyncio batcher sends a batch of one as Verify (a lone miss gets Verify's
own answer, at less cost than a VerifyBatch of one).
`close()` sends whatever is waiting and then waits for the batches in flight. The client
belongs to the caller: close it after the batcher.

This module is the part both flavours share: the settings and when a batch may go out now,
the waiters and their deadlines, and how a reply or a failure becomes each waiter's outcome.
`_batcher.py` (threads) and `_async_batcher.py` (asyncio) only add their way of waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import grpc

from authsidecar.client._errors import AuthClientError, error_for, from_rpc_error
from authsidecar.client._models import VerifiedClaims, VerifyItem

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


class _HasTimeout(Protocol):
    @property
    def timeout_s(self) -> float: ...


F = TypeVar("F", bound=_Settable)
C = TypeVar("C", bound=_HasTimeout)


@dataclass(slots=True)
class Waiter(Generic[F]):
    item: VerifyItem
    future: F
    deadline: float  # on the clock of the batcher (the loop's, or time.monotonic)


class BatcherBase(Generic[C]):
    """The settings, the client, and the rule for sending a batch without waiting."""

    def __init__(
        self, client: C, max_batch: int, max_delay_s: float, max_in_flight: int | None
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch must be 1..{MAX_BATCH} (the sidecar's default cap)")
        if max_delay_s < 0:
            raise ValueError("max_delay_s must be >= 0")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._client = client
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_in_flight = max_in_flight

    @property
    def client(self) -> C:
        """The client that sends the batches (the batcher never closes it)."""
        return self._client

    def _waiter(
        self,
        future: F,
        now: float,
        token: str,
        audience: str,
        required_scopes: Sequence[str],
        timeout_s: float | None,
    ) -> Waiter[F]:
        timeout = self._client.timeout_s if timeout_s is None else timeout_s
        return Waiter(VerifyItem(token, audience, tuple(required_scopes)), future, now + timeout)

    def _has_room(self, in_flight: int) -> bool:
        """May a batch go out now rather than wait for company?"""
        return self.max_in_flight is not None and in_flight < self.max_in_flight


def latest_deadline_s(waiters: Sequence[Waiter[F]], now: float) -> float:
    """The RPC's timeout: the latest deadline of its batch, from `now`."""
    return max(0.0, max(w.deadline for w in waiters) - now)


def copies(error: AuthClientError, count: int, cause: BaseException | None = None) -> list[Outcome]:
    """One instance per waiter: an exception raised in many tasks or threads would gather
    all their tracebacks on itself."""
    made: list[Outcome] = []
    for _ in range(count):
        copy = type(error)(error.code, error.reason, error.message)
        copy.__cause__ = cause
        made.append(copy)
    return made


def failed(error: BaseException, count: int) -> list[Outcome]:
    """A failed batch ends every waiter with its own copy of the error Verify would raise;
    anything that is not a gRPC failure still ends them, as an AuthClientError."""
    if isinstance(error, grpc.RpcError):
        return copies(from_rpc_error(error), count)
    if isinstance(error, AuthClientError):
        return copies(error, count)
    return copies(error_for(grpc.StatusCode.UNKNOWN, "", type(error).__name__), count, error)


def cancelled(count: int) -> list[Outcome]:
    return copies(error_for(grpc.StatusCode.CANCELLED, "", "cancelled"), count)


def deadline_exceeded() -> AuthClientError:
    """What Verify raises when its deadline passes."""
    return error_for(grpc.StatusCode.DEADLINE_EXCEEDED, "", "Deadline Exceeded")


def settle(waiters: Sequence[Waiter[F]], outcomes: Sequence[Outcome]) -> None:
    """Waiters that are already done (cancelled, timed out) are skipped: nobody is hurt."""
    for waiter, outcome in zip(waiters, outcomes, strict=True):
        if waiter.future.done():
            continue
        if isinstance(outcome, AuthClientError):
            waiter.future.set_exception(outcome)
        else:
            waiter.future.set_result(outcome)
