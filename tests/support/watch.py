"""A real Watch stream (issue 15) read in the background, for tests.

Messages go into a queue as they arrive, so a test can wait for the next one with a
timeout, skip heartbeats, or collect the end status of the stream.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from authsidecar.v1 import auth_pb2
from tests.support.sidecar import reason_of

if TYPE_CHECKING:
    from authsidecar.v1.auth_pb2_grpc import AuthServiceAsyncStub

__all__ = ["WatchStream", "claim_of"]

_OK = "OK"


def claim_of(token: str, name: str) -> str:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return str(claims[name])


class WatchStream:
    """One Watch call; `next()` returns messages in order, raising when the stream ended."""

    def __init__(
        self,
        stub: AuthServiceAsyncStub,
        *,
        epoch: str = "",
        after_sequence: int = 0,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        request = auth_pb2.WatchRequest(epoch=epoch, after_sequence=after_sequence)
        self.call = stub.Watch(request, metadata=metadata)
        self._queue: asyncio.Queue[auth_pb2.WatchEvent | tuple[grpc.StatusCode, str]] = (
            asyncio.Queue()
        )
        self._reader = asyncio.create_task(self._read())
        self.ended: tuple[grpc.StatusCode, str] | None = None

    async def _read(self) -> None:
        try:
            async for message in self.call:
                self._queue.put_nowait(message)
            self._queue.put_nowait((grpc.StatusCode.OK, _OK))
        except grpc.aio.AioRpcError as error:
            self._queue.put_nowait(reason_of(error))
        except asyncio.CancelledError:
            self._queue.put_nowait((grpc.StatusCode.CANCELLED, ""))

    async def next(self, timeout_s: float = 15.0) -> auth_pb2.WatchEvent:
        item = await asyncio.wait_for(self._queue.get(), timeout_s)
        if isinstance(item, tuple):
            self.ended = item
            pytest.fail(f"the Watch stream ended: {item}")
        return item

    async def next_event(self, timeout_s: float = 15.0) -> auth_pb2.WatchEvent:
        """The next message that is not a heartbeat."""
        while True:
            message = await self.next(timeout_s)
            if message.WhichOneof("event") != "heartbeat":
                return message

    async def sync(self) -> auth_pb2.WatchEvent:
        message = await self.next()
        assert message.WhichOneof("event") == "sync", message
        return message

    async def end(self, timeout_s: float = 30.0) -> tuple[grpc.StatusCode, str]:
        """Read (and discard) until the stream ends; its (status code, ErrorInfo reason)."""
        while True:
            item = await asyncio.wait_for(self._queue.get(), timeout_s)
            if isinstance(item, tuple):
                self.ended = item
                return item

    async def close(self) -> None:
        self.call.cancel()
        await self._reader
