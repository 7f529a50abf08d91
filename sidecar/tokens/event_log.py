"""The decision-invalidation event log behind the Watch stream (issue 15), without gRPC.

The events themselves (kinds, fields) are tokens/events.py.

What it guarantees:

* **One ordered log per process.** Events take consecutive sequence numbers from 1 under one
  lock; `epoch` (random per `EventLog`) names the log, so a subscriber resuming after a
  restart can tell its position belongs to another log.
* **Publish after the fact.** The sources (the revocation mirror, the key-ring swap) publish
  only once Verify at this process already refuses what the event voids. `publish` is
  synchronous and cheap (a lock, a deque append per subscriber); it runs on writes, never on
  Verify, and may be called from a worker thread (the key watcher reads files off the loop).
* **Replay or reset, race-free.** `subscribe(epoch, after_sequence)` decides under the same
  lock `publish` takes: either every event after `after_sequence` is still in the bounded
  replay ring (they are queued for the subscriber, `reset` false), or the subscriber must
  drop everything (`reset` true). Any event published later is queued live; none is lost
  or delivered twice. Hostile positions (another epoch, a sequence from the future, junk)
  are just a reset.
* **Bounded memory.** The ring holds `replay_size` events; each subscriber queues at most
  `queue_size` live events beyond its replay. One that falls behind is dropped (its queue
  is freed at once) and learns it on its next `take`; `on_end` lets the transport end a
  stream that is blocked writing to a client that stopped reading. An idle subscriber costs
  one small object and an empty deque.
* **Close.** `close()` (the start of shutdown) ends every subscription; `take` then answers
  None and later `subscribe` calls get closed subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice

from sidecar.errors import SubscriberDroppedError, SubscriberLimitError
from sidecar.store.base import Revocation
from sidecar.tokens.events import EVENT_KINDS, REVOCATION_KINDS, Event, EventKind

__all__ = ["EventLog", "Subscription"]


class Subscription:
    """One subscriber's position and queue. Owned by the loop that subscribed."""

    __slots__ = (
        "_log",
        "_loop",
        "_thread",
        "_queue",
        "_limit",
        "_live_limit",
        "_waiter",
        "_timer",
        "_state",
        "reset",
        "position",
        "on_end",
    )

    def __init__(
        self,
        log: EventLog,
        replay: Sequence[Event],
        *,
        reset: bool,
        position: int,
        limit: int,
        state: str,
    ) -> None:
        self._log = log
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._queue: deque[Event] = deque(replay)
        # The replay does not count against the live bound (it is bounded by the ring):
        # until the first `take`, the queue may hold it on top of `limit` live events.
        self._limit = limit + len(replay)
        self._live_limit = limit
        self._waiter: asyncio.Future[None] | None = None
        # `wait_until`'s deadline timer: kept across events, not re-armed per event.
        self._timer: asyncio.TimerHandle | None = None
        self._state = state  # "live", "dropped" or "closed"
        self.reset = reset
        # Where the subscriber stands: the queued events continue from here (the requested
        # position when replaying; the latest sequence after a reset).
        self.position = position
        # Called on the subscriber's loop once it is dropped or the log closes (not after
        # `close`): the transport ends a stream that may be blocked writing.
        self.on_end: Callable[[], None] | None = None

    @property
    def live(self) -> bool:
        return self._state == "live"

    def take(self) -> tuple[list[Event], int] | None:
        """(the queued events, in order; the latest sequence they bring the subscriber to).

        Every event up to that sequence is in the list or was taken before, so a heartbeat
        sent after the list may carry it. None once the log is closed. Raises
        SubscriberDroppedError after an overflow."""
        log = self._log
        with log._lock:
            if self._state == "dropped":
                raise SubscriberDroppedError()
            if self._state == "closed":
                return None
            events = list(self._queue)
            self._queue.clear()
            self._limit = self._live_limit
            return events, log._sequence

    async def wait_until(self, deadline: float) -> None:
        """Until an event is queued, the subscription ends, or the loop's time is `deadline`."""
        if self._queue or self._state != "live":
            return
        waiter = self._waiter = self._loop.create_future()
        if self._timer is None or self._timer.when() != deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._expire)
        try:
            await waiter
        finally:
            self._waiter = None

    def _expire(self) -> None:
        self._timer = None
        self._wake(False)

    def close(self) -> None:
        """Unsubscribe (the stream ended); idempotent."""
        log = self._log
        with log._lock:
            log._subscribers.discard(self)
            if self._state == "live":
                self._state = "closed"
            self._queue.clear()
        self.on_end = None
        if self._timer is not None:
            self._timer.cancel()

    # -- called by the log, under its lock ----------------------------------------------------

    def _offer(self, event: Event) -> bool:
        """Queue `event`; False when that overflows the bound (the caller drops us)."""
        if len(self._queue) >= self._limit:
            return False
        self._queue.append(event)
        return True

    def _end(self, state: str) -> None:
        self._state = state
        self._queue.clear()

    def _notify(self, ended: bool) -> None:
        """Wake the waiting stream, on its own loop (publish may run on a worker thread)."""
        if threading.get_ident() == self._thread:
            self._wake(ended)
            return
        # A loop already closed has no stream left to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake, ended)

    def _wake(self, ended: bool) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)
        if ended and self.on_end is not None:
            on_end, self.on_end = self.on_end, None
            on_end()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class EventLog:
    def __init__(
        self,
        *,
        replay_size: int = 4096,
        queue_size: int = 1024,
        max_subscribers: int = 1000,
        epoch: str | None = None,
    ) -> None:
        self.epoch = epoch or secrets.token_hex(16)
        self._lock = threading.Lock()
        self._sequence = 0
        self._ring: deque[Event] = deque(maxlen=replay_size)
        self._replay_size = replay_size
        self._queue_size = queue_size
        self._max_subscribers = max_subscribers
        self._subscribers: set[Subscription] = set()
        self._closed = False
        # Read by metrics at scrape time.
        self.published: dict[EventKind, int] = dict.fromkeys(EVENT_KINDS, 0)
        self.dropped = 0

    @property
    def sequence(self) -> int:
        """The latest sequence assigned (0 before the first event)."""
        return self._sequence

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- publishing -------------------------------------------------------------------------

    def publish(self, kind: EventKind, iss: str = "", subject: str = "") -> Event:
        """Append one event and queue it for every subscriber; drops those that overflow."""
        ended: list[Subscription] = []
        woken: list[Subscription] = []
        with self._lock:
            self._sequence += 1
            event = Event(self._sequence, kind, iss, subject)
            self._ring.append(event)
            self.published[kind] += 1
            for subscriber in self._subscribers:
                if subscriber._offer(event):
                    woken.append(subscriber)
                else:
                    subscriber._end("dropped")
                    ended.append(subscriber)
            for subscriber in ended:
                self._subscribers.discard(subscriber)
            self.dropped += len(ended)
        for subscriber in woken:
            subscriber._notify(False)
        for subscriber in ended:
            subscriber._notify(True)
        return event

    def publish_revocations(self, revocations: Sequence[Revocation]) -> None:
        """TokenRevoked / FamilyRevoked per entry new to the mirror. More entries than the
        replay ring holds (a long partition healed) are said in one DecisionsReset instead:
        the same effect on every subscriber, without flooding every queue."""
        if len(revocations) > max(self._replay_size, 1):
            self.publish_reset()
            return
        for revocation in revocations:
            kind = REVOCATION_KINDS.get(revocation.kind)
            if kind is not None:
                self.publish(kind, revocation.issuer, revocation.key)

    def publish_reset(self) -> None:
        self.publish("decisions_reset")

    def publish_retired(self, kids: Sequence[str]) -> None:
        for kid in kids:
            self.publish("key_retired", subject=kid)

    # -- subscribing ------------------------------------------------------------------------

    def subscribe(self, epoch: str, after_sequence: int) -> Subscription:
        """See the module docstring. Must run on the loop that will wait on it. Raises
        SubscriberLimitError when `max_subscribers` are subscribed already."""
        with self._lock:
            if self._closed:
                return Subscription(
                    self, (), reset=True, position=self._sequence, limit=0, state="closed"
                )
            if len(self._subscribers) >= self._max_subscribers:
                raise SubscriberLimitError()
            latest, ring = self._sequence, self._ring
            missed = latest - after_sequence
            if epoch == self.epoch and 0 <= missed <= len(ring):
                replay = list(islice(ring, len(ring) - missed, None))
                reset, position = False, after_sequence
            else:
                replay, reset, position = [], True, latest
            subscription = Subscription(
                self,
                replay,
                reset=reset,
                position=position,
                limit=self._queue_size,
                state="live",
            )
            self._subscribers.add(subscription)
            return subscription

    def close(self) -> None:
        """End every subscription (shutdown begins); idempotent. Publishing still works."""
        with self._lock:
            self._closed = True
            ended = list(self._subscribers)
            self._subscribers.clear()
            for subscriber in ended:
                subscriber._end("closed")
        for subscriber in ended:
            subscriber._notify(True)
