"""`AsyncVerifyBatcher`: the batcher of `_batch.py` for asyncio, gathering per loop turn."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from authsidecar.client._async_client import AsyncAuthClient
from authsidecar.client._batch import (
    DEFAULT_MAX_BATCH,
    BatcherBase,
    Outcome,
    Waiter,
    cancelled,
    copies,
    deadline_exceeded,
    failed,
    latest_deadline_s,
    settle,
)
from authsidecar.client._closing import AsyncClosing
from authsidecar.client._errors import AuthClientError
from authsidecar.client._models import VerifiedClaims, VerifyItem
from authsidecar.client._verify_stream import AsyncVerifyStream, StreamLost

_Waiter = Waiter[asyncio.Future[VerifiedClaims]]


class AsyncVerifyBatcher(AsyncClosing, BatcherBase[AsyncAuthClient]):
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
        stream: bool = False,
        hold_s: float = 0.0,
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
                arrive over many loop turns while the sidecar is busy share one call;
                a batch of one then goes as Verify.
            stream: send each batch as a message on one VerifyStream (opened by the first
                batch) instead of a unary call, which costs both ends far less; a batch the
                stream does not answer (stream ended, old sidecar) goes as a unary call
                after all (`_verify_stream.py`). The server interceptor's batcher does.
            hold_s: with `max_in_flight`, callers that waited for a batch to come back go
                out no sooner than this long after that batch was sent, so that more join
                them (fewer, larger batches under load). Only callers that already waited
                are held: one that finds nothing in flight and nothing held goes at once.
        """
        if hold_s < 0:
            raise ValueError("hold_s must be >= 0")
        self.hold_s = hold_s
        self._sent_at = float("-inf")
        super().__init__(client, max_batch, max_delay_s, max_in_flight)
        self._stream = AsyncVerifyStream(client._verify_stream) if stream else None
        self._waiting: list[_Waiter] = []
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
        future: asyncio.Future[VerifiedClaims] = loop.create_future()
        waiter = self._waiter(future, loop.time(), token, audience, required_scopes, timeout_s)
        self._waiting.append(waiter)
        if len(self._waiting) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._schedule(loop)
        try:
            async with asyncio.timeout_at(waiter.deadline):
                return await future
        except TimeoutError:
            raise deadline_exceeded() from None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        delay = self.max_delay_s
        if self.max_in_flight is not None and not self._has_room(len(self._in_flight)):
            if delay:  # otherwise `_landed` sends it
                self._timer = loop.call_later(delay, self._flush)
        elif delay and self.max_in_flight is None:
            self._timer = loop.call_later(delay, self._flush)
        else:
            self._timer = loop.call_soon(self._flush)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._has_room(len(self._in_flight)) and self._waiting:
            loop = asyncio.get_running_loop()
            hold = self._sent_at + self.hold_s - loop.time()
            if hold <= 0 or len(self._waiting) >= self.max_batch:
                self._flush()
            elif self._timer is None:  # held: later callers join (`verify` sees the timer)
                self._timer = loop.call_later(hold, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [w for w in self._waiting if not w.future.done()]
        self._waiting = []
        if batch:
            loop = asyncio.get_running_loop()
            self._sent_at = loop.time()
            task = loop.create_task(self._send(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._landed)

    async def _send(self, batch: list[_Waiter]) -> None:
        """Every waiter of `batch` ends with a result or an error. Raises nothing but its own
        cancellation (the loop shutting down), and only after ending the waiters."""
        loop = asyncio.get_running_loop()
        timeout_s = latest_deadline_s(batch, loop.time())
        outcomes: Sequence[Outcome] | None = None
        try:
            stream = self._stream
            if stream is not None and stream.usable(loop.time()):
                try:
                    outcomes = await stream.verify_batch([w.item for w in batch], timeout_s)
                except StreamLost:  # not answered: unary below, in the time left
                    timeout_s = latest_deadline_s(batch, loop.time())
            if outcomes is None:
                outcomes = await self._unary(batch, timeout_s)
        except asyncio.CancelledError:  # the loop is going away: end the waiters, not hang
            settle(batch, cancelled(len(batch)))
            raise
        except TimeoutError:  # the stream's answer came after every waiter's deadline
            outcomes = copies(deadline_exceeded(), len(batch))
        except Exception as error:
            outcomes = failed(error, len(batch))
        settle(batch, outcomes)

    async def _unary(self, batch: list[_Waiter], timeout_s: float) -> Sequence[Outcome]:
        if len(batch) == 1 and self.max_in_flight is not None:
            return [await self._alone(batch[0].item, timeout_s)]
        return await self._client.verify_batch([w.item for w in batch], timeout_s=timeout_s)

    async def _alone(self, item: VerifyItem, timeout_s: float) -> Outcome:
        """With `max_in_flight` (the server interceptor's batcher), a batch of one is sent as
        Verify: the same answer (Verify's own error, reason included) for less CPU at both
        ends than a VerifyBatch of one (measured: about 40 µs less at the sidecar)."""
        try:
            return await self._client.verify(
                item.token,
                audience=item.audience,
                required_scopes=item.required_scopes,
                timeout_s=timeout_s,
            )
        except AuthClientError as error:
            return error

    async def close(self) -> None:
        """Send what waits, then wait for the batches in flight (their deadlines bound this)."""
        self._closed = True
        self._flush()
        if self._in_flight:
            # asyncio.wait, not gather: cancelling close() must not cancel the batches.
            await asyncio.wait(set(self._in_flight))
        if self._stream is not None:
            await self._stream.aclose()

    _aclose = close
