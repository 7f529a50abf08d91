"""The Watch stream over gRPC (issue 15): the event log (tokens/event_log.py) as WatchEvents.

Thin on purpose: the log decides replay or reset, orders events and bounds memory; this
module converts, sends heartbeats and ends streams with a precise status.

* First message: `sync` (reset flag, heartbeat interval; its sequence is the position the
  events that follow continue from), then the replayed events, then live ones, each as
  soon as it is published.
* A heartbeat every `watch.heartbeat_interval_ms`, whatever else is sent, carrying the
  latest sequence the subscriber now has every event up to (events queued before it are
  sent before it).
* Hostile requests (a junk epoch, an absurd `after_sequence`) are a reset, never an error.
* Ends: past `watch.max_subscribers`, RESOURCE_EXHAUSTED / WATCH_SUBSCRIBER_LIMIT before
  anything is sent; a subscriber that fell behind, UNAVAILABLE / WATCH_SUBSCRIBER_DROPPED;
  shutdown (`EventLog.close`), UNAVAILABLE / SHUTTING_DOWN. A stream blocked writing to a
  client that stopped reading cannot notice either by itself, so the end is sent from a
  separate task (`Subscription.on_end`): the handler finishes and frees what it holds at
  once. HTTP/2 delivers the status behind the events flow control still holds, so such a
  client sees it when it reads again; one that never reads again keeps its call open until
  it disconnects, or at shutdown until the grace period ends and the sidecar closes the
  connection (the stop waits for the ending task: `track`, transport/drain.py). Clients
  that read see the end at once. A client that goes away cancels the handler, which
  unsubscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc

from authsidecar.v1 import auth_pb2
from sidecar.errors import AuthSidecarError, ShuttingDownError, SubscriberDroppedError
from sidecar.tokens.event_log import EventLog, Subscription
from sidecar.tokens.events import Event
from sidecar.transport.status import to_status

__all__ = ["WatchStreams"]

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


class WatchStreams:
    def __init__(
        self,
        events: EventLog,
        *,
        heartbeat_interval_ms: int,
        track: Callable[[asyncio.Task[None]], None] | None = None,
    ) -> None:
        self._events = events
        self._interval_ms = heartbeat_interval_ms
        # Tasks ending streams from outside (see the module docstring), kept until done.
        self._enders: set[asyncio.Task[None]] = set()
        # Told of each such task: the stop waits for them (transport/drain.py, CallGate).
        self._track = track
        # The last event's message: every subscriber sends the same one, one after the
        # other in a fan-out, so it is built once (messages are only read once built).
        self._last: tuple[Event, auth_pb2.WatchEvent] | None = None

    async def stream(
        self, request: auth_pb2.WatchRequest, context: Context
    ) -> AsyncGenerator[auth_pb2.WatchEvent, None]:
        events = self._events
        try:
            subscription = events.subscribe(request.epoch, request.after_sequence)
        except AuthSidecarError as error:
            await _end(context, error)
            return
        ender: asyncio.Task[None] | None = None

        def on_end() -> None:
            nonlocal ender
            ender = asyncio.get_running_loop().create_task(self._end(context, subscription))
            self._enders.add(ender)
            ender.add_done_callback(self._enders.discard)
            if self._track is not None:
                self._track(ender)

        subscription.on_end = on_end
        try:
            if not subscription.live:
                await _end(context, ShuttingDownError())
                return
            async with contextlib.aclosing(self._messages(subscription)) as messages:
                async for message in messages:
                    yield message
        except (SubscriberDroppedError, ShuttingDownError) as error:
            if ender is None:
                # Seen here before the log's notice arrived (an overflow on a worker
                # thread): end the call from here, and the late notice does nothing.
                subscription.on_end = None
                await _end(context, _noted(error, context))
            else:
                # The ending task sends the status; wait for it so the call ends with it.
                await asyncio.shield(ender)
        finally:
            subscription.close()

    async def _messages(
        self, subscription: Subscription
    ) -> AsyncGenerator[auth_pb2.WatchEvent, None]:
        epoch = self._events.epoch
        interval_s = self._interval_ms / 1000
        loop = asyncio.get_running_loop()
        events, latest = _take(subscription)
        yield auth_pb2.WatchEvent(
            epoch=epoch,
            sequence=subscription.position,
            sync=auth_pb2.WatchSync(
                reset=subscription.reset, heartbeat_interval_ms=self._interval_ms
            ),
        )
        next_beat = loop.time() + interval_s
        while True:
            for event in events:
                yield self._message(epoch, event)
            now = loop.time()
            if now >= next_beat:
                yield auth_pb2.WatchEvent(
                    epoch=epoch, sequence=latest, heartbeat=auth_pb2.WatchHeartbeat()
                )
                # Paced from the schedule, not from the send; after a slow write the
                # schedule restarts from now rather than sending a burst.
                next_beat += interval_s
                if next_beat <= now:
                    next_beat = now + interval_s
            # The same deadline until the next heartbeat: the subscription keeps its timer.
            await subscription.wait_until(next_beat)
            events, latest = _take(subscription)

    def _message(self, epoch: str, event: Event) -> auth_pb2.WatchEvent:
        last = self._last
        if last is not None and last[0] is event:
            return last[1]
        message = _message(epoch, event)
        self._last = (event, message)
        return message

    async def _end(self, context: Context, subscription: Subscription) -> None:
        """From outside the handler: the subscriber was dropped or the log closed."""
        try:
            subscription.take()
            error: AuthSidecarError = ShuttingDownError()
        except SubscriberDroppedError as dropped:
            error = _noted(dropped, context)
        if context.done():
            return
        with contextlib.suppress(Exception):  # a call that ended meanwhile
            await _end(context, error)


def _noted(error: AuthSidecarError, context: Context) -> AuthSidecarError:
    if isinstance(error, SubscriberDroppedError):
        log.warning("watch subscriber %s dropped: it fell behind", context.peer())
    return error


def _take(subscription: Subscription) -> tuple[list[Event], int]:
    taken = subscription.take()
    if taken is None:
        raise ShuttingDownError()
    return taken


async def _end(context: Context, error: AuthSidecarError) -> None:
    """Abort with the error's status; the AbortError it raises is swallowed."""
    status = to_status(error)
    with contextlib.suppress(grpc.aio.AbortError):
        await context.abort(status.code, status.details, status.trailing_metadata)


def _message(epoch: str, event: Event) -> auth_pb2.WatchEvent:
    message = auth_pb2.WatchEvent(epoch=epoch, sequence=event.sequence)
    kind = event.kind
    if kind == "token_revoked":
        message.token_revoked.iss = event.iss
        message.token_revoked.jti = event.subject
    elif kind == "family_revoked":
        message.family_revoked.iss = event.iss
        message.family_revoked.sid = event.subject
    elif kind == "key_retired":
        message.key_retired.kid = event.subject
    else:
        message.decisions_reset.SetInParent()
    return message
