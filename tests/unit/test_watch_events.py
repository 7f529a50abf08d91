"""The Watch event log (tokens/event_log.py), its events and their sources, without gRPC
(issue 15)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sidecar.config import load_settings
from sidecar.errors import (
    ConfigError,
    StoreUnavailableError,
    SubscriberDroppedError,
    SubscriberLimitError,
)
from sidecar.keys.ring import KeyRing
from sidecar.store.base import Revocation, RevocationRow
from sidecar.tokens.event_log import EventLog, Subscription
from sidecar.tokens.events import Event, retired_kids
from sidecar.tokens.revocation import RevocationMirror
from tests.support.keys import make_key
from tests.support.polling import eventually

ISS = "urn:test"


def _jti(log: EventLog, jti: str) -> Event:
    return log.publish("token_revoked", ISS, jti)


def _taken(subscription: Subscription) -> tuple[list[tuple[int, str]], int]:
    taken = subscription.take()
    assert taken is not None
    events, latest = taken
    return [(e.sequence, e.subject) for e in events], latest


async def test_sequences_are_consecutive_from_one_and_the_epoch_is_random() -> None:
    log = EventLog()
    assert log.sequence == 0
    assert [_jti(log, str(i)).sequence for i in range(3)] == [1, 2, 3]
    assert log.epoch != EventLog().epoch and len(log.epoch) == 32
    assert log.published["token_revoked"] == 3


async def test_resume_replays_exactly_the_events_after_the_position() -> None:
    log = EventLog(replay_size=8)
    for i in range(5):
        _jti(log, f"j{i}")
    subscription = log.subscribe(log.epoch, 2)
    assert (subscription.reset, subscription.position) == (False, 2)
    _jti(log, "live")
    assert _taken(subscription) == ([(3, "j2"), (4, "j3"), (5, "j4"), (6, "live")], 6)
    assert _taken(subscription) == ([], 6)


@pytest.mark.parametrize(
    ("epoch", "after"),
    [
        ("", 0),  # a first subscription
        ("other", 3),  # another log (a restart)
        ("SAME", 0),  # events 1 and 2 left the ring of 3
        ("SAME", 1),
        ("SAME", 6),  # a position the log never reached
        ("SAME", 2**64 - 1),
        ("SAME", -1),
    ],
)
async def test_unreplayable_positions_reset_and_replay_nothing(epoch: str, after: int) -> None:
    log = EventLog(replay_size=3)
    for i in range(5):
        _jti(log, f"j{i}")
    subscription = log.subscribe(log.epoch if epoch == "SAME" else epoch, after)
    assert (subscription.reset, subscription.position) == (True, 5)
    assert _taken(subscription) == ([], 5)


async def test_the_oldest_position_still_in_the_ring_replays() -> None:
    log = EventLog(replay_size=3)
    for i in range(5):
        _jti(log, f"j{i}")
    assert _taken(log.subscribe(log.epoch, 2)) == ([(3, "j2"), (4, "j3"), (5, "j4")], 5)
    empty = EventLog(replay_size=0)
    assert empty.subscribe(empty.epoch, 0).reset is False  # nothing happened yet
    _jti(empty, "x")
    assert empty.subscribe(empty.epoch, 0).reset is True


async def test_no_event_is_lost_or_duplicated_between_replay_and_live_under_threads() -> None:
    log = EventLog(replay_size=100_000, queue_size=100_000)
    stop = threading.Event()

    def publisher() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            _jti(log, str(n))

    thread = threading.Thread(target=publisher)
    thread.start()
    try:
        # By progress, not by time: events on both sides of the subscription whatever the load.
        await eventually(lambda: log.sequence >= 1000, "events before the subscription")
        position = log.sequence // 2
        subscription = log.subscribe(log.epoch, position)
        after = log.sequence + 1000
        await eventually(lambda: log.sequence >= after, "events after the subscription")
    finally:
        stop.set()
        thread.join()
    assert subscription.reset is False
    sequences = [s for s, _ in _taken(subscription)[0]]
    assert sequences == list(range(position + 1, log.sequence + 1))


async def test_a_subscriber_that_overflows_is_dropped_and_others_are_not() -> None:
    log = EventLog(queue_size=3)
    slow, fast = log.subscribe("", 0), log.subscribe("", 0)
    ended: list[str] = []
    slow.on_end = lambda: ended.append("slow")
    for i in range(3):
        _jti(log, str(i))
        _taken(fast)
    assert log.subscriber_count == 2 and log.dropped == 0
    _jti(log, "overflow")
    assert (log.subscriber_count, log.dropped, slow.live) == (1, 1, False)
    assert ended == ["slow"]
    with pytest.raises(SubscriberDroppedError):
        slow.take()
    assert _taken(fast) == ([(4, "overflow")], 4)


async def test_a_replay_does_not_count_against_the_live_bound() -> None:
    log = EventLog(replay_size=10, queue_size=2)
    for i in range(6):
        _jti(log, str(i))
    subscription = log.subscribe(log.epoch, 0)
    _jti(log, "a")
    _jti(log, "b")
    assert subscription.live
    _jti(log, "c")
    assert not subscription.live
    # Once the replay is taken, the bound is the live one again.
    resumed = log.subscribe(log.epoch, 0)
    assert len(_taken(resumed)[0]) == 9
    _jti(log, "d")
    _jti(log, "e")
    assert resumed.live
    _jti(log, "f")
    assert not resumed.live


async def test_subscribers_beyond_the_limit_are_refused_until_one_leaves() -> None:
    log = EventLog(max_subscribers=2)
    first, _ = log.subscribe("", 0), log.subscribe("", 0)
    with pytest.raises(SubscriberLimitError):
        log.subscribe("", 0)
    first.close()
    first.close()  # idempotent
    assert log.subscribe("", 0).live


async def test_wait_returns_on_an_event_from_another_thread_and_on_timeout() -> None:
    log = EventLog()
    subscription = log.subscribe("", 0)
    await subscription.wait_until(asyncio.get_running_loop().time() + 0.01)  # at the deadline
    assert _taken(subscription) == ([], 0)
    threading.Timer(0.05, _jti, (log, "from-a-thread")).start()
    await asyncio.wait_for(subscription.wait_until(asyncio.get_running_loop().time() + 60), 30)
    assert _taken(subscription) == ([(1, "from-a-thread")], 1)


async def test_waiting_again_for_the_same_deadline_after_an_event_still_ends_at_it() -> None:
    """The stream waits for its heartbeat deadline, is woken by an event, and waits for the
    same deadline again: the timer armed the first time (kept, not re-armed) still ends it."""
    log = EventLog()
    subscription = log.subscribe("", 0)
    deadline = asyncio.get_running_loop().time() + 0.2
    waiting = asyncio.create_task(subscription.wait_until(deadline))
    await asyncio.sleep(0)
    _jti(log, "woken")
    await asyncio.wait_for(waiting, 30)
    assert _taken(subscription) == ([(1, "woken")], 1)
    await asyncio.wait_for(subscription.wait_until(deadline), 30)  # nothing queued: the timer
    assert _taken(subscription) == ([], 1)
    assert asyncio.get_running_loop().time() >= deadline
    subscription.close()


async def test_close_ends_every_subscription_and_later_ones() -> None:
    log = EventLog()
    subscription = log.subscribe("", 0)
    ended: list[bool] = []
    subscription.on_end = lambda: ended.append(True)
    waiting = asyncio.create_task(subscription.wait_until(asyncio.get_running_loop().time() + 60))
    await asyncio.sleep(0)
    log.close()
    await asyncio.wait_for(waiting, 30)
    assert ended == [True] and subscription.take() is None
    assert log.subscriber_count == 0
    late = log.subscribe(log.epoch, 0)
    assert not late.live and late.take() is None
    _jti(log, "after-close")  # publishing still works (writes go on during the drain)


def test_retired_kids_are_removed_or_changed_keys_never_added_ones() -> None:
    a, b, c = make_key("ES256", "a"), make_key("ES256", "b"), make_key("ES256", "c")
    b_replaced = make_key("ES384", "b")  # same kid, other key material and algorithm
    old = KeyRing([a, b], signing_kid="a")
    assert retired_kids(old, KeyRing([a, b, c], signing_kid="c")) == []  # added, promoted
    assert retired_kids(old, KeyRing([b], signing_kid="b")) == ["a"]
    assert retired_kids(old, KeyRing([a, b_replaced], signing_kid="a")) == ["b"]
    assert retired_kids(old, None) == ["a", "b"]
    assert retired_kids(None, old) == []


def _revocation(key: str, kind: str = "jti", until: int = 100) -> Revocation:
    return Revocation(kind, ISS, key, until)  # type: ignore[arg-type]


def _row(key: str) -> RevocationRow:
    return ("jti", ISS, key, 100)


def test_the_mirror_reports_only_entries_new_to_it_after_they_are_in_place() -> None:
    mirror = RevocationMirror()
    reported: list[list[tuple[str, str]]] = []

    def on_new(revocations: object) -> None:
        assert isinstance(revocations, list | tuple)
        for r in revocations:  # already refused when reported
            assert mirror.is_revoked(ISS, r.key if r.kind == "jti" else "", r.key)
        reported.append([(r.kind, r.key) for r in revocations])

    mirror.on_new = on_new
    mirror.merge([_row("baseline")])  # the first load is the baseline
    mirror.mark_loaded()
    assert reported == []
    mirror.add(_revocation("j1"))
    mirror.add(_revocation("j1", until=500))  # a longer horizon voids nothing new
    mirror.add(_revocation("f1", kind="family"))
    assert reported == [[("jti", "j1")], [("family", "f1")]]
    # Reconciliation: only what the mirror did not have.
    mirror.merge([_row("baseline"), _row("j1"), _row("j2")])
    assert reported[-1] == [("jti", "j2")]
    mirror.merge([_row("j2")])  # a store that lost entries
    assert len(reported) == 3


async def test_many_new_revocations_at_once_become_one_decisions_reset() -> None:
    log = EventLog(replay_size=2)
    subscription = log.subscribe("", 0)
    log.publish_revocations([_revocation(str(i)) for i in range(3)])
    taken = subscription.take()
    assert taken is not None
    assert [e.kind for e in taken[0]] == ["decisions_reset"]
    log.publish_revocations([_revocation("x"), _revocation("s", kind="family")])
    taken = subscription.take()
    assert taken is not None
    assert [(e.kind, e.iss, e.subject) for e in taken[0]] == [
        ("token_revoked", ISS, "x"),
        ("family_revoked", ISS, "s"),
    ]


def test_a_mirror_turning_stale_under_refuse_resets_decisions_after_refusing() -> None:
    for refuse in (False, True):
        mirror = RevocationMirror(refuse_while_stale=refuse)
        resets: list[bool] = []

        def on_reset(m: RevocationMirror = mirror, r: list[bool] = resets) -> None:
            with pytest.raises(StoreUnavailableError):
                m.is_revoked(ISS, "j", "")
            r.append(True)

        mirror.on_reset = on_reset
        mirror.set_stale(True)
        mirror.set_stale(True)
        mirror.set_stale(False)
        assert resets == ([True] if refuse else [])


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("heartbeat_interval_ms", 0),
        ("heartbeat_interval_ms", 10),
        ("replay_buffer_size", -1),
        ("subscriber_queue_size", 0),
        ("max_subscribers", 0),
    ],
)
def test_watch_settings_out_of_range_stop_start_up_naming_the_setting(
    setting: str, value: int
) -> None:
    with pytest.raises(ConfigError, match=f"watch.{setting}"):
        load_settings(None, watch={setting: value})


def test_watch_settings_default_and_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = load_settings(None).watch
    assert (defaults.heartbeat_interval_ms, defaults.replay_buffer_size) == (1000, 4096)
    assert (defaults.subscriber_queue_size, defaults.max_subscribers) == (1024, 1000)
    monkeypatch.setenv("AUTHSIDECAR_WATCH__HEARTBEAT_INTERVAL_MS", "250")
    assert load_settings(None).watch.heartbeat_interval_ms == 250
