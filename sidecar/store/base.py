"""What the token engine asks of a store: refresh families and revocations (`TokenStore`).

The values it takes and returns live in records.py and the shared pure parts (the refresh
decision, deadlines, scopes) in rotation.py; both are importable from here as before.

State is keyed by family id and by `iss` + `jti`, never by token text: one token has several
accepted spellings elsewhere, and a store keyed by text would let a respelled token dodge a
revocation. Every method may raise `StoreUnavailableError` when the backend cannot be reached
(or after `close`); nothing else escapes, except `ValueError` from `create_family` for a family
id already taken, which is a caller bug (ids are random), never a backend condition.

Atomicity is the store's job: `rotate` is one transaction (SQLite, memory under its lock) or
one script (Redis) that takes the WHOLE refresh decision (issue 12): subject/issuer match,
revoked or ended, reuse (with the revocation recorded at its full horizon), scope narrowing,
rotation or grace. Nothing is written before every check has passed, so a refused refresh
never consumes its token and a reuse is never half recorded.

Deadlines (issue 13): every write carries `deadline_ms`, absolute epoch milliseconds by the
caller's clock, no later than the moment the caller stops waiting and reports UNAVAILABLE. A
write that reaches the store after it does nothing and raises `StoreDeadlineError` (Redis
compares with the server's `TIME`, so the clocks must agree to well under the store timeout;
SQLite and memory compare with their clock just before committing). So "unavailable" means
"not applied", with one exception no protocol can close: a write applied before its deadline
whose reply was then lost in transit is reported unavailable although applied (a retried
rotation is then ROTATED again, see `rotate`; a revocation stays revoked; a family created for
a failed Issue is never referenced and expires).

Racing presenters: when N callers present the same current token at once, one gets ROTATED.
With `grace_s = 0` the next one to run presents a now-retired token and gets REUSED (revoking
the family, as RFC 9700 section 4.14.2 reuse detection requires), and the rest find the family
revoked and get REVOKED. With a grace window (issue 3: the client that lost the first response
and retries), every other presenter within `grace_s` of the rotation gets GRACE and the same
successor, and only a presentation after the window is REUSED.

Identity (issue 13): `epoch` names the store's data set; it is written once (set if absent) and
changes only when the data is gone (Redis restarted empty, a failover to a replica that never
had it, a new SQLite file). Sidecars use it to notice a lost store and write back the
revocations they still hold (tokens/revocation.py); refresh families are not restored: their
refresh tokens are refused (UNKNOWN) from then on, which fails closed.

Reading revocations at scale (issue 16): a sidecar loads the live set once, in pages
(`revocation_cursor`, then `scan_revocations` until its token is ""), and afterwards reads only
what was written since (`revocations_since`), so a reconciliation costs the store O(changes),
not O(all revocations). Every write that adds a revocation or lengthens its horizon gets a
position after every earlier one (SQLite: a sequence column; Redis: the feed stream's ids);
a write that changes nothing gets none. `revocations_since` answers None when it cannot vouch
for the changes since a cursor (the position was trimmed away, or the store no longer has it:
it lost data): the caller then reads everything again and writes back what is missing.

Forgetting: nothing is kept past its `expires_at`. `revocations(now)` purges expired
revocations and ended families, so `rotate`/`get_family` on an ended family may answer
UNKNOWN/None instead of REVOKED; both refuse, and the refresh token has expired by then anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from sidecar.store.records import (
    FamilyRecord,
    Revocation,
    RevocationGroup,
    RevocationKind,
    RevocationRow,
    RotateOutcome,
    RotateResult,
    Rotation,
)
from sidecar.store.rotation import deadline_for, past, scope_within


def group_rows(rows: Iterable[RevocationRow]) -> list[RevocationGroup]:
    """Rows as `scan_revocation_groups` hands them over (for stores with no cheaper way)."""
    groups: dict[tuple[RevocationKind, str], tuple[list[bytes], list[int]]] = {}
    for kind, issuer, key, until in rows:
        keys, untils = groups.setdefault((kind, issuer), ([], []))
        keys.append(key.encode("utf-8", "surrogatepass"))
        untils.append(until)
    return [(kind, issuer, keys, untils) for (kind, issuer), (keys, untils) in groups.items()]


__all__ = [
    "FamilyRecord",
    "Revocation",
    "RevocationFeed",
    "RevocationGroup",
    "RevocationKind",
    "RevocationRow",
    "RotateOutcome",
    "SnapshotStore",
    "RotateResult",
    "Rotation",
    "TokenStore",
    "deadline_for",
    "group_rows",
    "past",
    "scope_within",
]


class RevocationFeed(Protocol):
    """Revocations recorded by any sidecar sharing the store, pushed as they are written.

    Gap-free from the moment `TokenStore.open_revocation_feed` returned until iteration raises
    StoreUnavailableError (connection lost, or `close`). A consumer therefore opens the feed
    first, then loads `revocations(now)` (so nothing between the two is missed; an entry seen
    twice is harmless), then applies what the feed yields; after a failure it starts over.
    """

    def __aiter__(self) -> AsyncIterator[Revocation]: ...

    async def close(self) -> None:
        """Stop the feed (idempotent); a pending iteration ends with StoreUnavailableError."""
        ...


class TokenStore(Protocol):
    @property
    def timeout_s(self) -> float:
        """How long one call may wait on the backend before the caller hears UNAVAILABLE:
        the longest budget a write's deadline may be given (Redis: its socket timeout;
        SQLite: its lock wait)."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers; raise StoreUnavailableError otherwise."""
        ...

    async def epoch(self, candidate: str, *, deadline_ms: int) -> str:
        """The store's identity: `candidate` is recorded if the store has none (set once, never
        overwritten), and the recorded one is returned. A different answer than last time
        means the data set was replaced or lost."""
        ...

    async def persistence(self) -> str:
        """How the backend keeps data across its own restart, for operators (issue 13):
        "aof-always", "aof-everysec", "aof-no", "rdb", "none" (Redis), "fsync" (SQLite),
        "process" (memory: dies with the process, and so does every mirror), or "unknown"
        when the backend will not say (Redis with CONFIG renamed or refused)."""
        ...

    async def create_family(self, family: FamilyRecord, *, deadline_ms: int) -> None:
        """Record a new family whose first refresh token is `family.current_jti`.

        Raises ValueError when `family.family_id` is already taken: never overwrite, since
        that would resurrect a revoked family or swap a live one's owner.
        """
        ...

    async def get_family(self, family_id: str) -> FamilyRecord | None: ...

    async def rotate(self, rotation: Rotation) -> RotateResult:
        """The whole refresh decision for `rotation`, in one atomic step.

        Raises StoreDeadlineError, changing nothing, when it runs after `deadline_ms`.
        Otherwise checked in this order:

        1. UNKNOWN when there is no such family (`family` is None);
        2. MISMATCH when `subject`/`issuer` are not the family's; nothing changes;
        3. REVOKED when the family is already revoked or has ended (`now >= expires_at`),
           whatever jti was presented; nothing changes;
        4. ROTATED again, changing nothing, when `presented_jti` is `previous_jti` and
           `next_jti` is current: the same rotation retried after a lost reply (the driver's
           one retry on a broken connection), so the retry gets what the first run made;
        5. when `presented_jti` is current, or is `previous_jti` with `now < rotated_at +
           grace_s` (GRACE: `grace_s = 0` disables the window; times are whole seconds, so
           the window is between `grace_s - 1` and `grace_s` seconds long):
           SCOPE_WIDENED, changing nothing, when `scope` is not a subset of the family's
           (so a bad request does not cost the caller its token); otherwise ROTATED
           (`next_jti` becomes current, `presented_jti` becomes `previous_jti`,
           `rotated_at` becomes `now`) or GRACE (nothing changes; `family.current_jti` is
           the successor minted at that rotation);
        6. REUSED otherwise: the family is marked revoked and a family revocation
           (`issuer` = the family's, `key` = `family_id`, until `expires_at +
           revoke_extra_s`) is recorded and published in the same step (`revocation`).

        `family` in the result is the record after the step.
        """
        ...

    async def revoke(self, revocation: Revocation, *, deadline_ms: int) -> None:
        """Record a revocation (idempotent; a repeat keeps the later `expires_at`).

        A family revocation also marks the family with that id revoked, in the same step,
        whatever the revocation's `issuer`: failing closed beats a mismatch leaving it live.
        Raises StoreDeadlineError, recording nothing, when it runs after `deadline_ms`.
        """
        ...

    async def restore(self, revocations: Sequence[Revocation], *, deadline_ms: int) -> int:
        """`revoke` for many at once: how a sidecar writes back the revocations a lost store
        forgot (issue 13). Duplicates are harmless. SQLite and memory apply all in one step;
        Redis in batches of one script each (a failure part way leaves earlier batches
        written, which a retry writes again). Past `deadline_ms` a step writes nothing.

        Returns how many the store lacked (absent, or held with a shorter horizon): only
        those are written, published and given a new position; the rest change nothing."""
        ...

    async def revocation_cursor(self) -> str:
        """The position of the newest revocation write now. Read it before a full
        `scan_revocations`, then follow with `revocations_since` from it: nothing written
        during or after the scan is missed."""
        ...

    @property
    def scan_ahead(self) -> bool:
        """Whether a reader should ask for the next page of `scan_revocations` while it
        merges the current one: True where a page waits on a server (Redis: its work and the
        round trip overlap ours); False where the page is computed by a thread of this
        process (SQLite: its driver takes the GIL back for every row, so overlapping it with
        our own work makes both slower)."""
        ...

    async def scan_revocations(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str]:
        """One page (about `limit` rows) of the live revocations (`expires_at > now`), and
        the token of the next page ("" when this was the last). Start with token "". Every
        entry present for the whole scan is returned at least once; duplicates are possible.
        """
        ...

    async def scan_revocation_groups(
        self, token: str, now: int, limit: int
    ) -> tuple[list[RevocationGroup], str]:
        """`scan_revocations` grouped by (kind, issuer), keys in UTF-8: what the first full
        load reads (its cost per row is most of a start). Same guarantees; its own tokens."""
        ...

    async def revocations_since(
        self, cursor: str, now: int, limit: int
    ) -> tuple[list[RevocationRow], str] | None:
        """Up to `limit` revocation writes after `cursor` still in force at `now`, and the
        cursor after them (equal to `cursor` when nothing is new). The writes of one key come
        in write order; writes of different keys may not (Redis keeps one stream per
        partition: issue 16), which is harmless since readers keep the longest horizon.
        Redis gives up to `limit` per partition, so a page may hold more than `limit`.
        Fewer than `limit` rows means caught up. None when the store cannot say what
        changed since `cursor`: the position was trimmed away or the store lost it (data
        lost); read everything again."""
        ...

    async def count_revocations(self, from_expires_at: int) -> int | None:
        """How many revocations have `expires_at >= from_expires_at`, when the store can
        answer in O(log n) and can lose part of its data while keeping its epoch and
        positions (Redis: a failover to a replica that missed the last writes); None
        otherwise (SQLite commits all or nothing; memory dies with its mirror). A sidecar
        that holds more such entries than the store knows the store lost some."""
        ...

    async def purge(self, now: int) -> None:
        """Drop expired revocations and ended families (`expires_at <= now`); cheap when
        nothing has expired, so every sidecar may call it on every poll."""
        ...

    async def revocations(self, now: int) -> list[Revocation]:
        """Every revocation still in force at `now` (`expires_at > now`), in no set order.
        One list of everything: for tests and tools; sidecars read pages (see above).

        Expired revocations and ended families (`expires_at <= now`) are purged on the way
        (the contract suite checks it), so state stays bounded by what is still live.
        """
        ...

    async def open_revocation_feed(self) -> RevocationFeed | None:
        """A push feed of revocations written by other processes, or None when the store has
        none (memory: no other process shares it; SQLite: the mirror is reconciled by polling
        `revocations` every `store.sync_interval_s`). Raises StoreUnavailableError."""
        ...

    async def close(self) -> None:
        """Release the backend (idempotent); every later call raises StoreUnavailableError."""
        ...


@runtime_checkable
class SnapshotStore(Protocol):
    """A store that also keeps one sidecar's revocation snapshot for the others (issue 16):
    a new pod with no local snapshot loads it and follows it with `revocations_since`, like
    a restart (tokens/revocation_snapshot_store.py). Only Redis offers it: SQLite's file is
    local to the pod and its full read already meets the start target; memory has no other
    reader. The bytes are opaque here: the reader checks them (digest, epoch, cursor) as it
    checks a local file, and falls back to the full read on any doubt."""

    async def read_snapshot(self) -> bytes | bytearray | None:
        """The stored copy, None when there is none; raises StoreUnavailableError."""
        ...

    async def write_snapshot(
        self, make: Callable[[], Awaitable[Sequence[bytes]]], *, holder: str, every_s: float
    ) -> bool:
        """Store the copy `make` returns (its bytes, in order) unless another holder wrote
        or is writing within the last `every_s` seconds: then False, and `make` is never
        called (the copy costs CPU only on the one writer of the interval). One writer per
        interval across the fleet. Raises StoreUnavailableError."""
        ...
