"""The decision cache and the Watch-applying core, without a server: real protobuf events,
a hand-driven monotonic clock, the rules of auth.proto's `Watch` comment."""

from __future__ import annotations

import tracemalloc

import pytest
from google.protobuf import struct_pb2

from authsidecar.client._decisions import REVOKED, DecisionCache, Refused, decision_key, entry_bytes
from authsidecar.client._models import VerifiedClaims, claims_from
from authsidecar.client._watch_state import WatchState
from authsidecar.v1 import auth_pb2

NOW = 1_800_000_000.0
EPOCH = "e1"


def claims(
    jti: str = "j1", *, kid: str = "k1", sid: str = "", exp: float = NOW + 600
) -> VerifiedClaims:
    extra: dict[str, object] = {"jti": jti, "iss": "https://issuer"}
    if sid:
        extra["sid"] = sid
    return VerifiedClaims(
        sub="alice",
        iss="https://issuer",
        aud=("svc-b",),
        exp=int(exp),
        iat=int(NOW),
        nbf=int(NOW),
        jti=jti,
        scope="read",
        client_id="",
        kid=kid,
        claims=extra,
    )


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def sync(sequence: int = 0, *, reset: bool = True, epoch: str = EPOCH) -> auth_pb2.WatchEvent:
    return auth_pb2.WatchEvent(
        epoch=epoch,
        sequence=sequence,
        sync=auth_pb2.WatchSync(reset=reset, heartbeat_interval_ms=100),
    )


def heartbeat(sequence: int, epoch: str = EPOCH) -> auth_pb2.WatchEvent:
    return auth_pb2.WatchEvent(epoch=epoch, sequence=sequence, heartbeat=auth_pb2.WatchHeartbeat())


def revoked(sequence: int, jti: str, iss: str = "https://issuer") -> auth_pb2.WatchEvent:
    return auth_pb2.WatchEvent(
        epoch=EPOCH, sequence=sequence, token_revoked=auth_pb2.TokenRevoked(iss=iss, jti=jti)
    )


def family(sequence: int, sid: str) -> auth_pb2.WatchEvent:
    return auth_pb2.WatchEvent(
        epoch=EPOCH,
        sequence=sequence,
        family_revoked=auth_pb2.FamilyRevoked(iss="https://issuer", sid=sid),
    )


def retired(sequence: int, kid: str) -> auth_pb2.WatchEvent:
    return auth_pb2.WatchEvent(
        epoch=EPOCH, sequence=sequence, key_retired=auth_pb2.KeyRetired(kid=kid)
    )


def current_state() -> tuple[WatchState, Clock]:
    clock = Clock()
    state = WatchState(DecisionCache(), monotonic=clock)
    assert state.apply(sync())
    return state, clock


def store(state: WatchState, token: str, decision: VerifiedClaims) -> bool:
    key = decision_key(token, "svc-b", ("read",))
    hit, position = state.consult(key, NOW)
    assert hit is None
    return state.admit(position, key, decision, len(token), NOW)


def hit(state: WatchState, token: str) -> VerifiedClaims | Refused | None:
    return state.consult(decision_key(token, "svc-b", ("read",)), NOW)[0]


def test_a_hit_is_the_stored_decision_unchanged_and_keyed_by_the_whole_question() -> None:
    state, _ = current_state()
    decision = claims()
    assert store(state, "tok-1", decision)
    assert hit(state, "tok-1") is decision
    # Scope order and repetition do not matter; another audience or scope set is another key.
    key = decision_key("tok-1", "svc-b", ("read", "read"))
    assert state.consult(key, NOW)[0] is decision
    assert state.consult(decision_key("tok-1", "svc-a", ("read",)), NOW)[0] is None
    assert state.consult(decision_key("tok-1", "svc-b", ("read", "write")), NOW)[0] is None
    assert state.consult(decision_key("tok-2", "svc-b", ("read",)), NOW)[0] is None


def test_nothing_is_served_or_kept_before_the_first_sync() -> None:
    clock = Clock()
    state = WatchState(DecisionCache(), monotonic=clock)
    key = decision_key("tok", "svc-b", ())
    assert state.consult(key, NOW) == (None, None)
    assert not state.admit(None, key, claims(), 3, NOW)
    assert state.stats().bypassed == 1 and state.stats().not_stored == 1


def test_each_event_voids_exactly_the_decisions_it_names() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja", sid="s1"))
    assert store(state, "b", claims("jb", sid="s1", kid="k2"))
    assert store(state, "c", claims("jc", sid="s2"))
    assert store(state, "d", claims("jd", kid="k2"))
    assert store(state, "e", claims("je"))
    assert state.apply(revoked(1, "ja", iss="https://other"))  # another issuer's jti
    assert isinstance(hit(state, "a"), VerifiedClaims)
    assert state.apply(revoked(2, "ja"))
    assert hit(state, "a") is REVOKED and isinstance(hit(state, "b"), VerifiedClaims)
    assert state.apply(family(3, "s1"))
    assert hit(state, "b") is REVOKED and isinstance(hit(state, "c"), VerifiedClaims)
    assert state.apply(retired(4, "k2"))  # drops "d", and "b"'s refusal: Verify decides
    assert hit(state, "d") is None and hit(state, "b") is None
    assert hit(state, "a") is REVOKED
    assert isinstance(hit(state, "c"), VerifiedClaims) and isinstance(
        hit(state, "e"), VerifiedClaims
    )
    stats = state.stats()
    assert (stats.entries, stats.tombstones, stats.dropped) == (3, 1, 3)
    assert dict(stats.invalidations) == {
        "token_revoked": 2,
        "family_revoked": 1,
        "key_retired": 1,
        "decisions_reset": 0,
        "resync": 1,
        "gap": 0,
    }
    reset = auth_pb2.WatchEvent(epoch=EPOCH, sequence=5, decisions_reset=auth_pb2.DecisionsReset())
    assert state.apply(reset)
    assert hit(state, "c") is None and hit(state, "e") is None
    assert state.stats().entries == 0


def test_a_skipped_sequence_number_drops_everything() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja"))
    assert state.apply(revoked(2, "unrelated"))  # 1 never arrived: it may have voided "a"
    assert hit(state, "a") is None
    assert state.stats().invalidations["gap"] == 1
    # The stream goes on from the number it jumped to.
    assert store(state, "a", claims("ja"))
    assert state.apply(revoked(3, "unrelated"))
    assert hit(state, "a") is not None


def test_a_heartbeat_announcing_unseen_events_drops_everything() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja"))
    assert state.apply(heartbeat(0))
    assert hit(state, "a") is not None
    assert state.apply(heartbeat(1))
    assert hit(state, "a") is None and state.stats().invalidations["gap"] == 1


def test_an_event_of_an_unknown_kind_drops_everything() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja"))
    assert state.apply(auth_pb2.WatchEvent(epoch=EPOCH, sequence=1))  # no oneof set
    assert hit(state, "a") is None


def test_messages_breaking_the_contract_end_the_stream_and_forget_the_epoch() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja"))
    assert not state.apply(heartbeat(0, epoch="other"))
    assert hit(state, "a") is None
    assert state.request() == auth_pb2.WatchRequest(epoch="", after_sequence=0)
    state, _ = current_state()
    assert not state.apply(sync())  # a second sync on one stream
    assert state.stats().current is False


def test_no_hit_once_the_stream_is_silent_past_the_staleness_bound() -> None:
    state, clock = current_state()  # heartbeat every 100 ms: bound 300 ms
    assert store(state, "a", claims("ja"))
    clock.t += 0.29
    assert hit(state, "a") is not None
    clock.t += 0.02
    assert hit(state, "a") is None and state.stats().current is False
    assert state.apply(heartbeat(0))  # late, but nothing was missed: served again
    assert hit(state, "a") is not None
    staleness = state.stats().staleness_s
    assert staleness is not None and staleness < 0.3


def test_a_configured_staleness_bound_overrides_the_heartbeat_multiple() -> None:
    clock = Clock()
    state = WatchState(DecisionCache(), staleness_s=5.0, monotonic=clock)
    assert state.apply(sync())
    assert store(state, "a", claims("ja"))
    clock.t += 4.9
    assert hit(state, "a") is not None
    clock.t += 0.2
    assert hit(state, "a") is None


def test_a_cut_stream_serves_nothing_and_a_resumed_one_replays_before_serving() -> None:
    state, _ = current_state()
    assert state.apply(revoked(1, "x"))
    assert store(state, "a", claims("ja"))
    assert store(state, "b", claims("jb"))
    state.disconnected()
    assert hit(state, "a") is None
    assert state.request() == auth_pb2.WatchRequest(epoch=EPOCH, after_sequence=1)
    # Resumed: the sync continues from 1; events 2 and 3 happened during the cut and are
    # replayed after it. Only the heartbeat after them says the replay is complete.
    assert state.apply(sync(1, reset=False))
    assert hit(state, "b") is None  # event 2 might void it
    assert state.apply(revoked(2, "ja"))
    assert state.apply(revoked(3, "other"))
    assert hit(state, "b") is None
    assert state.apply(heartbeat(3))
    assert hit(state, "a") is REVOKED and isinstance(hit(state, "b"), VerifiedClaims)
    assert state.stats().invalidations["resync"] == 1  # resumed, not reset


def test_a_resync_with_reset_or_a_new_epoch_drops_everything() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja"))
    state.disconnected()
    assert state.apply(sync(7, reset=True))
    assert hit(state, "a") is None
    assert store(state, "a", claims("ja"))
    state.disconnected()
    assert state.apply(sync(0, reset=False, epoch="restarted"))  # another log entirely
    assert hit(state, "a") is None
    assert state.stats().invalidations["resync"] == 3


def test_an_answer_voided_while_verify_was_in_flight_is_not_kept() -> None:
    state, _ = current_state()
    key = decision_key("a", "svc-b", ())
    _, position = state.consult(key, NOW)
    assert state.apply(revoked(1, "ja"))  # sent after the sidecar started refusing "a"
    assert not state.admit(position, key, claims("ja"), 1, NOW)
    # An event about another token does not stop the answer from being kept.
    _, position = state.consult(key, NOW)
    assert state.apply(revoked(2, "other"))
    assert state.apply(retired(3, "k-other"))
    assert state.admit(position, key, claims("ja"), 1, NOW)
    assert state.stats().not_stored == 1 and state.stats().stored == 1


def test_an_answer_is_not_kept_across_a_cut_a_lapse_or_a_reset() -> None:
    state, clock = current_state()
    key = decision_key("a", "svc-b", ())
    _, position = state.consult(key, NOW)
    state.disconnected()
    assert state.apply(sync(0, reset=False))
    assert state.apply(heartbeat(0))
    assert not state.admit(position, key, claims("ja"), 1, NOW)  # events may have been lost
    _, position = state.consult(key, NOW)
    clock.t += 1.0  # silent past the bound, then a heartbeat: current again, but was not
    assert state.apply(heartbeat(0))
    assert not state.admit(position, key, claims("ja"), 1, NOW)
    _, position = state.consult(key, NOW)
    assert state.apply(
        auth_pb2.WatchEvent(epoch=EPOCH, sequence=1, decisions_reset=auth_pb2.DecisionsReset())
    )
    assert not state.admit(position, key, claims("ja"), 1, NOW)
    _, position = state.consult(key, NOW)
    assert state.admit(position, key, claims("ja"), 1, NOW)


def test_decisions_live_only_between_nbf_and_exp() -> None:
    cache = DecisionCache()
    key = decision_key("a", "", ())
    decision = claims(exp=NOW + 60)
    assert not cache.put(key, decision, 1, NOW + 60)  # already expired: not kept
    assert not cache.put(key, decision, 1, NOW - 1)  # not yet valid: not kept
    assert cache.put(key, decision, 1, NOW)
    assert cache.get(key, NOW - 1) is None  # before nbf: not served
    assert cache.get(key, NOW + 59.9) is decision
    assert cache.get(key, NOW + 60) is None  # at exp: gone, leeway never extends a hit
    assert (len(cache), cache.expirations) == (0, 1)


def test_the_cache_is_bounded_in_entries_and_bytes_least_recently_used_out() -> None:
    cache = DecisionCache(max_entries=3, max_bytes=10**6)
    keys = [decision_key(f"t{i}", "", ()) for i in range(4)]
    for i, key in enumerate(keys[:3]):
        assert cache.put(key, claims(f"j{i}"), 100, NOW)
    assert cache.get(keys[0], NOW) is not None  # 0 used: 1 is now the oldest
    assert cache.put(keys[3], claims("j3"), 100, NOW)
    assert cache.get(keys[1], NOW) is None and cache.evictions == 1
    assert cache.revoke_token("https://issuer", "j1") == 0  # its index entry went with it
    by_bytes = DecisionCache(max_entries=100, max_bytes=entry_bytes(1000) * 2)
    for i, key in enumerate(keys):
        assert by_bytes.put(key, claims(f"j{i}"), 1000, NOW)
    assert len(by_bytes) == 2 and by_bytes.bytes <= by_bytes.max_bytes
    assert not by_bytes.put(keys[0], claims(), 10**6, NOW)  # larger than the whole bound


def test_entry_bytes_is_not_below_what_an_entry_really_takes() -> None:
    """Measured: building the VerifiedClaims from a Verify reply and keeping it, per entry."""
    extra = struct_pb2.Struct()
    extra.update({f"claim{i}": "v" * 20 for i in range(15)} | {"sid": "s" * 36})
    replies = [
        auth_pb2.VerifyResponse(
            sub="alice",
            iss="https://issuer",
            aud=["svc-b"],
            exp=int(NOW) + 600,
            iat=int(NOW),
            nbf=int(NOW),
            jti=f"{i:036d}",
            scope="read write",
            kid="k1",
            claims=extra,
        )
        for i in range(500)
    ]
    token_length = 1000  # a compact JWS of these claims is well under this
    keys = [decision_key(f"token-{i}", "svc-b", ("read",)) for i in range(500)]
    cache = DecisionCache(max_entries=10_000, max_bytes=10**9)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for key, reply in zip(keys, replies, strict=True):
        assert cache.put(key, claims_from(reply), token_length, NOW)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert 0 < grown <= cache.bytes, (grown, cache.bytes)


@pytest.mark.parametrize("bad", [0, -1])
def test_cache_bounds_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError):
        DecisionCache(max_entries=bad)
    with pytest.raises(ValueError):
        DecisionCache(max_bytes=bad)
    with pytest.raises(ValueError):
        WatchState(DecisionCache(), staleness_s=bad)


# ---- refusals kept in place of revoked decisions (tombstones) ------------------------------


def refused(state: WatchState, token: str, now: float) -> VerifiedClaims | Refused | None:
    return state.consult(decision_key(token, "svc-b", ("read",)), now)[0]


def test_a_revoked_decision_is_refused_until_exp_and_never_at_or_past_it() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja", exp=NOW + 60))
    assert state.apply(revoked(1, "ja"))
    assert refused(state, "a", NOW) is REVOKED
    assert refused(state, "a", NOW + 59.9) is REVOKED
    assert refused(state, "a", NOW + 60) is None  # exp: Verify decides (TOKEN_EXPIRED...)
    stats = state.stats()
    assert (stats.refused_locally, stats.hits, stats.misses) == (2, 0, 2)  # store, then exp
    assert (stats.entries, stats.tombstones, stats.expirations) == (0, 0, 1)


def test_a_refusal_is_not_served_before_nbf() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja"))
    assert state.apply(revoked(1, "ja"))
    assert refused(state, "a", NOW - 1) is None
    assert refused(state, "a", NOW) is REVOKED


def test_a_family_revocation_refuses_each_of_its_decisions_once() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja", sid="s1"))
    assert store(state, "b", claims("jb", sid="s1"))
    assert state.apply(revoked(1, "ja"))
    assert state.apply(family(2, "s1"))  # "a" is already a refusal: voided once, not twice
    assert hit(state, "a") is REVOKED and hit(state, "b") is REVOKED
    stats = state.stats()
    assert (stats.dropped, stats.tombstones, stats.entries) == (2, 2, 2)


def test_no_refusal_is_served_while_the_stream_is_not_current() -> None:
    state, clock = current_state()
    assert store(state, "a", claims("ja"))
    assert state.apply(revoked(1, "ja"))
    state.disconnected()
    assert state.consult(decision_key("a", "svc-b", ("read",)), NOW) == (None, None)
    assert state.apply(sync(1, reset=False))
    assert hit(state, "a") is None  # replaying: not current yet
    assert state.apply(heartbeat(1))
    assert hit(state, "a") is REVOKED  # kept across the resumed cut, like decisions
    clock.t += 1.0  # silent past the bound
    assert hit(state, "a") is None
    assert state.stats().bypassed == 3 and state.stats().refused_locally == 1


@pytest.mark.parametrize(
    "event",
    [
        retired(2, "k1"),
        auth_pb2.WatchEvent(epoch=EPOCH, sequence=2, decisions_reset=auth_pb2.DecisionsReset()),
        revoked(3, "unrelated"),  # a gap: number 2 never arrived
    ],
    ids=["key_retired", "decisions_reset", "gap"],
)
def test_a_retired_key_a_reset_or_a_gap_drops_refusals_and_leaves_it_to_verify(
    event: auth_pb2.WatchEvent,
) -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja"))
    assert state.apply(revoked(1, "ja"))
    assert state.apply(event)
    assert hit(state, "a") is None
    stats = state.stats()
    assert (stats.entries, stats.tombstones, stats.bytes, stats.dropped) == (0, 0, 0, 1)


def test_a_resync_with_reset_drops_refusals() -> None:
    state, _ = current_state()
    assert store(state, "a", claims("ja"))
    assert state.apply(revoked(1, "ja"))
    state.disconnected()
    assert state.apply(sync(9, reset=True))
    assert hit(state, "a") is None and state.stats().tombstones == 0


def test_refusals_count_in_the_bounds_and_leave_least_recently_used_first() -> None:
    cache = DecisionCache(max_entries=2, max_bytes=10**6)
    keys = [decision_key(f"t{i}", "", ()) for i in range(3)]
    assert cache.put(keys[0], claims("j0"), 100, NOW)
    assert cache.put(keys[1], claims("j1"), 100, NOW)
    charged = cache.bytes
    assert cache.revoke_token("https://issuer", "j0") == 1
    assert (len(cache), cache.tombstones, cache.bytes) == (2, 1, charged)
    assert cache.get(keys[1], NOW) is not None  # the refusal of t0 is now the oldest entry
    assert cache.put(keys[2], claims("j2"), 100, NOW)
    assert cache.get(keys[0], NOW) is None  # evicted: Verify decides again
    assert (len(cache), cache.tombstones, cache.evictions) == (2, 0, 1)
