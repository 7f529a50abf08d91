"""`VerifyBatcher`: the batcher of `_batch.py` for threads.

The caller that opens a batch sends it (there is no sender thread to start or stop) and then
waits for its own answer, like every other caller. The RPC is non-blocking, so no caller
waits past its own deadline for batch-mates that have longer ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc

from authsidecar.client._batch import (
    DEFAULT_MAX_BATCH,
    DEFAULT_THREAD_DELAY_S,
    BatcherBase,
    Outcome,
    Waiter,
    deadline_exceeded,
    failed,
    latest_deadline_s,
    settle,
)
from authsidecar.client._client import AuthClient
from authsidecar.client._closing import Closing
from authsidecar.client._models import VerifiedClaims, batch_request, batch_results
from authsidecar.v1 import auth_pb2

_Waiter = Waiter[Future[VerifiedClaims]]


@dataclass(slots=True)
class _Batch:
    waiters: list[_Waiter] = field(default_factory=list)
    sealed: bool = False


class VerifyBatcher(Closing, BatcherBase[AuthClient]):
    """`verify` with the meaning of `AuthClient.verify`, for threads; thread-safe."""

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
        super().__init__(client, max_batch, max_delay_s, max_in_flight)
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
        future: Future[VerifiedClaims] = Future()
        waiter = self._waiter(future, time.monotonic(), token, audience, required_scopes, timeout_s)
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
                    lambda: mine.sealed or self._has_room(self._sending), timeout=self.max_delay_s
                )
                self._seal(batch)
        if opener:
            self._send(batch)
        try:
            return future.result(timeout=max(0.0, waiter.deadline - time.monotonic()))
        except TimeoutError:
            raise deadline_exceeded() from None

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
        timeout_s = latest_deadline_s(waiters, time.monotonic())
        request = batch_request([w.item for w in waiters], "", ())
        try:
            call = self._client._verify_batch_future(request, timeout_s)
        except Exception as error:
            self._answer(waiters, failed(error, len(waiters)))
            return
        call.add_done_callback(lambda done: self._answer(waiters, self._outcomes(done, waiters)))

    @staticmethod
    def _outcomes(
        call: grpc.Future[auth_pb2.VerifyBatchResponse], waiters: Sequence[_Waiter]
    ) -> Sequence[Outcome]:
        """Runs on grpc's callback thread; never raises."""
        try:
            return batch_results(call.result(), len(waiters))
        except Exception as error:  # the call failed, or its reply does not answer every item
            return failed(error, len(waiters))

    def _answer(self, waiters: Sequence[_Waiter], outcomes: Sequence[Outcome]) -> None:
        try:
            settle(waiters, outcomes)
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
