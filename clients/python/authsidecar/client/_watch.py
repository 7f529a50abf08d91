"""The subscription loops that keep a `WatchState` fed: a daemon thread, or an asyncio task.

Both do the same thing around the same `WatchState`: open `Watch` with the epoch and last
sequence applied, hand every message to `state.apply`, and when the stream ends, fails, is
silent past the staleness bound, or breaks the contract, mark the state disconnected (no hits
from then on) and resubscribe after an exponential backoff with jitter (reset once a stream
delivers its sync). A sidecar that does not serve Watch (UNIMPLEMENTED) or has no room for
another subscriber (RESOURCE_EXHAUSTED) is retried at the longest backoff; the interceptor
meanwhile verifies every call, as without a cache.

A loop ends when it is closed, or when its client's channel is closed (opening a stream then
fails with a usage error): there is nothing left to watch for.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grpc

from authsidecar.client._watch_state import WatchState
from authsidecar.v1 import auth_pb2

_log = logging.getLogger("authsidecar.client.watch")

INITIAL_BACKOFF_S = 0.05
MAX_BACKOFF_S = 5.0
GUARD_POLL_S = 0.25  # the sync watcher's silence check runs at least this often


class _Backoff:
    def __init__(self) -> None:
        self.next_s = INITIAL_BACKOFF_S
        self._warned = False

    def delay_s(self) -> float:
        delay = self.next_s * (0.5 + random.random() / 2)  # noqa: S311 -- jitter, not a secret
        self.next_s = min(self.next_s * 2, MAX_BACKOFF_S)
        return delay

    def synced(self) -> None:
        self.next_s = INITIAL_BACKOFF_S
        self._warned = False

    def failed(self, error: grpc.RpcError) -> None:
        code = error.code() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None
        # No Watch at this sidecar, or its subscriber limit reached: no point hurrying.
        if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED):
            self.next_s = MAX_BACKOFF_S
        if not self._warned:  # once per outage, not once per attempt
            self._warned = True
            _log.warning(
                "watch stream to the sidecar failed (%s); verifying every call until it is back",
                code.name if code is not None else type(error).__name__,
            )


class _SyncStream(Protocol):
    def __iter__(self) -> Iterator[auth_pb2.WatchEvent]: ...
    def cancel(self) -> bool: ...


class ThreadWatcher:
    """Feeds `state` from a daemon thread; a second one cuts streams gone silent."""

    def __init__(
        self, state: WatchState, open_stream: Callable[[auth_pb2.WatchRequest], _SyncStream]
    ) -> None:
        self._state = state
        self._open = open_stream
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._call: _SyncStream | None = None
        self._heard_at = time.monotonic()  # the live stream's last message (or its start)
        self._threads = [
            threading.Thread(target=self._run, name="authsidecar-watch", daemon=True),
            threading.Thread(target=self._guard, name="authsidecar-watch-guard", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        backoff = _Backoff()
        while not self._stop.is_set():
            try:
                call = self._open(self._state.request())
            except ValueError:  # the client's channel is closed: nothing left to watch
                self._stop.set()  # the guard too
                break
            with self._lock:
                if self._stop.is_set():
                    call.cancel()
                    break
                self._call = call
                self._heard_at = time.monotonic()
            try:
                for event in call:
                    self._heard_at = time.monotonic()
                    if not self._state.apply(event):
                        break
                    if event.HasField("sync"):
                        backoff.synced()
            except grpc.RpcError as error:
                if not self._stop.is_set():
                    backoff.failed(error)
            finally:
                with self._lock:
                    self._call = None
                call.cancel()
                self._state.disconnected()
            self._stop.wait(backoff.delay_s())

    def _guard(self) -> None:
        """Cut the live stream when nothing arrived within the read timeout."""
        while not self._stop.wait(min(self._state.read_timeout_s() / 4, GUARD_POLL_S)):
            with self._lock:
                silent_s = time.monotonic() - self._heard_at
                if self._call is not None and silent_s > self._state.read_timeout_s():
                    self._call.cancel()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop both threads and cancel the stream; idempotent."""
        self._stop.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()
        for thread in self._threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout_s)


class AsyncWatcher:
    """Feeds `state` from a task on the running loop; start it from that loop."""

    def __init__(
        self,
        state: WatchState,
        open_stream: Callable[[auth_pb2.WatchRequest], grpc.aio.UnaryStreamCall[Any, Any]],
    ) -> None:
        self._state = state
        self._open = open_stream
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def started(self) -> bool:
        return self._task is not None or self._closed

    def start(self) -> None:
        if not self.started:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="authsidecar-watch"
            )

    async def _run(self) -> None:
        backoff = _Backoff()
        while True:
            try:
                call = self._open(self._state.request())
            except (grpc.aio.UsageError, RuntimeError, ValueError):  # the channel is closed
                return
            try:
                await self._follow(call, backoff)
            except grpc.RpcError as error:
                backoff.failed(error)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # aclose(): really ours
                # grpc.aio cancels a call whose channel was closed: see if it was.
            finally:
                call.cancel()
                self._state.disconnected()
            await asyncio.sleep(backoff.delay_s())

    async def _follow(self, call: grpc.aio.UnaryStreamCall[Any, Any], backoff: _Backoff) -> None:
        """Apply the stream's messages until it ends, breaks the contract, or is silent past
        the read timeout. Silence is watched by one timer that re-arms itself from the last
        message's time, not by a timeout around every read: that costs each message (each
        event, in every subscribed process) a timer set and cancelled (~10 us)."""
        loop = asyncio.get_running_loop()
        heard_at = time.monotonic()
        silent = False
        timer: asyncio.TimerHandle | None = None

        def watchdog() -> None:
            nonlocal timer, silent
            bound_s = self._state.read_timeout_s()
            quiet_s = time.monotonic() - heard_at
            if quiet_s >= bound_s:
                silent = True
                call.cancel()  # the read below raises CancelledError
            else:
                timer = loop.call_later(bound_s - quiet_s, watchdog)

        timer = loop.call_later(self._state.read_timeout_s(), watchdog)
        try:
            while True:
                event = await call.read()
                heard_at = time.monotonic()
                if not isinstance(event, auth_pb2.WatchEvent) or not self._state.apply(event):
                    return  # EOF, or a message that breaks the contract
                if event.HasField("sync"):
                    backoff.synced()
                    timer.cancel()  # the bound the sync announced, from now on
                    timer = loop.call_later(self._state.read_timeout_s(), watchdog)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if silent and (task is None or not task.cancelling()):
                return  # silent past the bound: cut and resubscribe
            raise
        finally:
            timer.cancel()

    async def aclose(self) -> None:
        """Cancel the task and wait for it; idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
