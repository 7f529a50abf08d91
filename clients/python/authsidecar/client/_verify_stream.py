"""`AsyncVerifyStream`: VerifyBatch as messages on one open VerifyStream (issue 15).

Why: in grpc Python a unary call costs both ends far more than verifying a few tokens, and
a message on an already open stream does not pay gRPC's per-call work again (~350 µs less
per exchange, both ends; docs/performance.md). The asyncio server interceptor's batcher
(`_async_batcher.py`) sends its batches here first.

The guarantees it relies on are the proto's: one answer per message, in order. So the
pending batches are a FIFO, and a reader task hands each answer to the oldest. The stream is
opened lazily, by the first batch. Whatever ends it (the sidecar stopping, a cut connection,
an old sidecar answering UNIMPLEMENTED, a batch whose deadline passed), every batch still
waiting gets `StreamLost`, and the batcher sends it again as unary VerifyBatch or Verify:
Verify is read-only, so resending is safe, and the answer is then the unary one. After an
end the stream is not used for a backoff that doubles while opening keeps failing, and for
good after UNIMPLEMENTED; the batcher uses unary calls meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import cast

import grpc

from authsidecar.client import _calls
from authsidecar.client._errors import AuthClientError
from authsidecar.client._models import VerifiedClaims, VerifyItem
from authsidecar.v1 import auth_pb2

Call = grpc.aio.StreamStreamCall[auth_pb2.VerifyBatchRequest, auth_pb2.VerifyBatchResponse]
Opener = Callable[[], Call]
Reply = asyncio.Future[auth_pb2.VerifyBatchResponse]

INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 5.0


class StreamLost(Exception):
    """The stream ended (or is not to be used now) before answering: send it as unary."""


class AsyncVerifyStream:
    """One VerifyStream, (re)opened on demand. Use from one event loop."""

    def __init__(self, open_stream: Opener) -> None:
        self._open_stream = open_stream
        self._call: Call | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: collections.deque[Reply] = collections.deque()
        self._write = asyncio.Lock()
        self._retry_at = 0.0
        self._backoff_s = INITIAL_BACKOFF_S
        self._answered = False  # since the last open: did the stream work at all?
        self.disabled = False  # the sidecar has no VerifyStream (UNIMPLEMENTED)
        self.opened = 0  # streams opened (for tests and stats)
        self.answered = 0  # batches the stream answered

    def usable(self, now: float) -> bool:
        """Whether a batch should try the stream now (not disabled, not backing off)."""
        return not self.disabled and (self._call is not None or now >= self._retry_at)

    async def verify_batch(
        self, items: Sequence[VerifyItem], timeout_s: float
    ) -> list[VerifiedClaims | AuthClientError]:
        """Per-item results as `AsyncAuthClient.verify_batch` gives them. Raises `StreamLost`
        when the stream ends before answering, and TimeoutError when `timeout_s` passes
        (the stream is then ended: a stream that does not answer is not trusted again)."""
        call = _calls.verify_batch(items, "", ())
        request = cast(auth_pb2.VerifyBatchRequest, call.request)
        loop = asyncio.get_running_loop()
        reply: Reply = loop.create_future()
        async with self._write:
            stream = self._call if self._call is not None else self._open()
            self._pending.append(reply)
            try:
                await stream.write(request)
            except (grpc.RpcError, asyncio.InvalidStateError) as error:
                # Ended meanwhile; the reader fails the pending batches (this one included).
                self._end(stream, error)
        try:
            async with asyncio.timeout(timeout_s):
                answer = await reply
        except TimeoutError:
            self._end(stream, None)
            raise
        self.answered += 1
        return call.result(answer)

    def _open(self) -> Call:
        stream = self._open_stream()
        self._call = stream
        self._answered = False
        self.opened += 1
        self._reader = asyncio.get_running_loop().create_task(self._read(stream))
        return stream

    async def _read(self, stream: Call) -> None:
        """Hand each answer to the oldest pending batch, until the stream ends."""
        ended: BaseException | None = None
        try:
            while True:
                answer = await stream.read()
                if not isinstance(answer, auth_pb2.VerifyBatchResponse):
                    break  # EOF: the sidecar ended the stream OK
                if not self._pending:  # an answer nobody asked for: not our protocol
                    break
                self._answered = True
                reply = self._pending.popleft()
                if not reply.done():
                    reply.set_result(answer)
        except grpc.RpcError as error:
            ended = error
        finally:
            self._end(stream, ended)

    def _end(self, stream: Call, error: BaseException | None) -> None:
        """`stream` is over: fail what waits on it and decide when to open the next one."""
        if self._call is not stream:
            return
        self._call = None
        stream.cancel()
        waiting, self._pending = self._pending, collections.deque()
        for reply in waiting:
            if not reply.done():
                reply.set_exception(StreamLost())
        code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
        if code is grpc.StatusCode.UNIMPLEMENTED:
            self.disabled = True
            return
        if self._answered:
            self._backoff_s = INITIAL_BACKOFF_S
        self._retry_at = asyncio.get_running_loop().time() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)

    async def aclose(self) -> None:
        """End the stream; batches still waiting get `StreamLost` (their batcher resends)."""
        stream, reader = self._call, self._reader
        if stream is not None:
            self._end(stream, None)
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
