"""The revocation mirror (issue 16: a compact exact set) answers exactly for the triples it
holds, keeps the longest horizon, forgets an entry only by its own horizon (issue 13), and
reports to Watch only what is new to it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.store.base import Revocation, RevocationRow
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.revocation_set import RevocationSet

NOW = 1_700_000_000


def _mirror(*revocations: Revocation) -> RevocationMirror:
    mirror = RevocationMirror()
    for revocation in revocations:
        mirror.add(revocation)
    return mirror


def test_lookup_is_exact_for_kind_issuer_and_key() -> None:
    mirror = _mirror(
        Revocation("jti", "iss", "ab", NOW + 60), Revocation("family", "iss2", "f", NOW + 60)
    )
    assert mirror.is_revoked("iss", "ab", "")
    # Prefixes, suffixes and neighbours of a held key are other keys.
    for jti in ("a", "b", "abc", "xab", "ab ", "AB", ""):
        assert not mirror.is_revoked("iss", jti, "")
    assert not mirror.is_revoked("iss2", "ab", "")  # another issuer
    assert not mirror.is_revoked("other", "ab", "")  # an issuer never recorded
    assert mirror.is_revoked("iss2", "any", "f")
    assert not mirror.is_revoked("iss", "any", "f")  # the family is iss2's
    assert not mirror.is_revoked("iss2", "f", "")  # a family id is not a jti


def test_any_string_round_trips_and_matches_only_itself() -> None:
    """Keys with separators, non-ASCII, lone surrogates (JSON allows them), and issuers
    sharing prefixes: each held triple comes back as it went in and matches only itself."""
    odd = ["", " ", "\x00", "ÿ", "\udcff", "a\udcffb", "日本", "a b", "%20", "\U0001f600"]
    held = {Revocation("jti", iss, key, NOW + 60) for iss in ("i", "i2", "") for key in odd}
    mirror = _mirror(*held)
    assert set(mirror) == held and len(mirror) == len(held)
    for r in held:
        assert mirror.is_revoked(r.issuer, r.key, "")
    for key in odd:
        assert not mirror.is_revoked("i", key + "x", "")
        assert not mirror.is_revoked("i3", key, "")


def test_the_longest_horizon_is_kept_whatever_the_order() -> None:
    mirror = _mirror(Revocation("jti", "iss", "a", NOW + 60))
    mirror.add(Revocation("jti", "iss", "a", NOW + 30))
    assert mirror.horizon(Revocation("jti", "iss", "a", 0)) == NOW + 60
    mirror.merge([("jti", "iss", "a", NOW + 90), ("jti", "iss", "a", NOW + 10)])
    assert mirror.horizon(Revocation("jti", "iss", "a", 0)) == NOW + 90
    assert len(mirror) == 1
    assert mirror.purge(NOW + 60) == 0  # the longer horizon decides when it goes
    assert mirror.purge(NOW + 90) == 1 and not mirror.is_revoked("iss", "a", "")


def test_purge_forgets_exactly_what_has_expired() -> None:
    live = [Revocation("jti", "iss", f"live{i}", NOW + 1 + i) for i in range(500)]
    dead = [Revocation("jti", "iss", f"dead{i}", NOW - i) for i in range(500)]
    mirror = _mirror(*live, *dead)
    assert mirror.purge(NOW) == 500
    assert set(mirror) == set(live)
    assert all(not mirror.is_revoked("iss", r.key, "") for r in dead)
    assert mirror.purge(NOW) == 0


def test_purge_can_be_spread_over_slices_of_buckets() -> None:
    dead = [Revocation("jti", "iss", f"k{i}", NOW) for i in range(2_000)]
    mirror = _mirror(*dead)
    half = mirror.buckets // 2
    first = mirror.purge(NOW, 0, half)
    assert 0 < first < 2_000 and len(mirror) == 2_000 - first
    assert mirror.purge(NOW, half, mirror.buckets) == 2_000 - first
    assert len(mirror) == 0


def test_count_from_counts_entries_past_a_minute_boundary() -> None:
    mirror = _mirror(
        Revocation("jti", "iss", "a", NOW + 59),
        Revocation("jti", "iss", "b", NOW + 600),
        Revocation("jti", "iss", "c", NOW + 6_000),
    )
    boundary = (NOW + 120) // 60 * 60
    assert mirror.count_from(boundary) == 2
    mirror.add(Revocation("jti", "iss", "a", NOW + 7_000))  # a longer horizon moves it
    assert mirror.count_from(boundary) == 3
    mirror.purge(NOW + 601)
    assert mirror.count_from(boundary) == 2 and len(mirror) == 2


def test_chunks_hand_out_every_entry_once() -> None:
    held = {Revocation("jti", "iss", f"k{i}", NOW + 60) for i in range(5_000)}
    mirror = _mirror(*held)
    handed = [r for chunk in mirror.chunks() for r in chunk]
    assert len(handed) == len(held) and set(handed) == held


def test_entries_take_about_thirty_bytes_each() -> None:
    mirror = _mirror(*(Revocation("jti", "iss", f"{i:022d}", NOW + 60) for i in range(20_000)))
    # 1 separator + 1 kind + 3 issuer-code bytes + 22 key bytes + 4 bytes of horizon.
    assert mirror.nbytes() <= 32 * len(mirror) + 2 * mirror.buckets


def test_the_mirror_reports_only_new_entries_and_not_the_first_load() -> None:
    mirror = RevocationMirror()
    reported: list[list[str]] = []
    mirror.on_new = lambda new: reported.append([r.key for r in new])
    assert mirror.merge([("jti", "iss", "base", NOW + 60)]) == 1
    mirror.mark_loaded()
    assert reported == []
    assert mirror.merge([("jti", "iss", "base", NOW + 90), ("jti", "iss", "n", NOW + 9)]) == 1
    mirror.add(Revocation("jti", "iss", "n", NOW + 99))  # known: a longer horizon only
    mirror.add(Revocation("family", "iss", "n", NOW + 9))  # another kind: new
    assert reported == [["n"], ["n"]]


def test_an_issuer_that_was_never_recorded_is_not_interned_by_lookups() -> None:
    entries = RevocationSet()
    for i in range(100):
        assert not entries.contains("jti", f"iss{i}", "k")
    entries.add("jti", "iss", "k", NOW)
    assert entries.contains("jti", "iss", "k") and not entries.contains("jti", "iss0", "k")


_TEXT = st.text(alphabet=st.sampled_from(["a", "b", " ", "\x00", "é", "\udcff", "%"]), max_size=4)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["jti", "family"]),
            st.sampled_from(["i", "i ", "j"]),
            _TEXT,
            st.integers(0, 20),
        ),
        max_size=60,
    ),
    st.integers(0, 20),
)
def test_the_set_behaves_as_a_dict_keeping_the_longest_horizon(
    ops: list[tuple[str, str, str, int]], purge_at: int
) -> None:
    model: dict[tuple[str, str, str], int] = {}
    entries = RevocationSet()
    for kind, iss, key, until in ops:
        assert entries.add(kind, iss, key, until) == ((kind, iss, key) not in model)
        model[(kind, iss, key)] = max(model.get((kind, iss, key), 0), until)
    assert len(entries) == len(model)
    for kind, iss, key, _ in ops:
        assert entries.contains(kind, iss, key)
        assert entries.horizon(kind, iss, key) == model[(kind, iss, key)]
        assert entries.contains(kind, iss, key + "a") == ((kind, iss, key + "a") in model)
    assert entries.purge(purge_at) == sum(1 for v in model.values() if v <= purge_at)
    live = {k: v for k, v in model.items() if v > purge_at}
    assert {(r.kind, r.issuer, r.key): r.expires_at for r in entries} == live


def _rows(n: int, until: int) -> list[RevocationRow]:
    return [("jti", "iss", f"r{i}", until) for i in range(n)]


def test_merge_reports_new_entries_in_one_batch_per_page() -> None:
    mirror = RevocationMirror()
    mirror.mark_loaded()
    batches: list[int] = []
    mirror.on_new = lambda new: batches.append(len(new))
    assert mirror.merge(_rows(300, NOW + 60)) == 300
    assert mirror.merge(_rows(301, NOW + 60)) == 1
    assert batches == [300, 1]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),  # True: `add` (the feed during a first load); False: a page
            st.sampled_from(["jti", "family"]),
            st.sampled_from(["i", "i ", "j"]),
            st.lists(st.tuples(_TEXT, st.integers(0, 20)), max_size=8),
        ),
        max_size=30,
    )
)
def test_a_first_load_by_groups_ends_as_the_dict_of_its_entries(
    steps: list[tuple[bool, str, str, list[tuple[str, int]]]],
) -> None:
    """`append_group` takes pages in without lookups, `add` may come in between, `settle`
    over every bucket merges: the result is the dict keeping the longest horizon, whatever
    was appended twice."""
    model: dict[tuple[str, str, str], int] = {}
    entries = RevocationSet()
    for single, kind, iss, pairs in steps:
        if single:
            for key, until in pairs:
                entries.add(kind, iss, key, until)
        else:
            keys = [key.encode("utf-8", "surrogatepass") for key, _ in pairs]
            entries.append_group(kind, iss, keys, [until for _, until in pairs])  # type: ignore[arg-type]
        for key, until in pairs:
            model[(kind, iss, key)] = max(model.get((kind, iss, key), 0), until)
    entries.settle(0, entries.buckets)
    assert len(entries) == len(model)
    assert {(r.kind, r.issuer, r.key): r.expires_at for r in entries} == model
    for (kind, iss, key), until in model.items():
        assert entries.contains(kind, iss, key) and entries.horizon(kind, iss, key) == until


def test_a_large_first_load_by_pages_holds_every_entry_once_when_settled() -> None:
    entries = RevocationSet()
    keys = [f"jti-{i:08d}".encode() for i in range(200_000)]
    for start in range(0, len(keys), 2_000):
        page = keys[start : start + 2_000]
        entries.append_group("jti", "iss", page, [1_000 + start] * len(page))
    entries.append_group("jti", "iss", keys[:10], [5] * 10)  # a scan's duplicates
    assert entries.settle(0, entries.buckets) == 10
    assert len(entries) == len(keys) and entries.count_from(0) == len(keys)
    assert entries.horizon("jti", "iss", "jti-00000000") == 1_000
    assert entries.horizon("jti", "iss", "jti-00199999") == 1_000 + 198_000
    assert entries.purge(1_000) == 2_000 and len(entries) == len(keys) - 2_000


def test_a_first_load_key_holding_0xff_is_dropped_and_the_rest_of_its_page_kept() -> None:
    """No `str` key encodes to a 0xFF byte, so no lookup can name such a key; held, it
    would break the records' framing (a record boundary inside a key)."""
    entries = RevocationSet()
    entries.append_group("jti", "iss", [b"a", b"x\xff\x01\x00\x00\x00b", b"c"], [10, 20, 30])
    entries.settle(0, entries.buckets)
    assert {(r.key, r.expires_at) for r in entries} == {("a", 10), ("c", 30)}
    assert not entries.contains("jti", "iss", "b") and len(entries) == 2
    assert entries.purge(10) == 1 and len(entries) == 1
