"""The storage of the revocation set (revocation_set.py): records in buckets, with horizons.

* **Buckets**: records are spread over 2**14 buckets by Python's keyed string hash (SipHash,
  seeded per process), each a `bytearray` of records (`0xFF record ... 0xFF`,
  tokens/revocation_records.py) with a parallel `array('I')` of horizons. At a million entries
  a bucket holds ~60 records (~2 KiB), so a lookup is one hash and one C-level search of a
  short string, an insertion one append, and no operation ever touches more than one bucket:
  there is no rebuild of the whole set to pause the event loop or the collector (the records
  are not Python objects the collector tracks).
* **Expiry**: each bucket keeps its earliest horizon, so `purge` rewrites only buckets holding
  something expired. Horizons are stored as unsigned 32-bit epoch seconds (until 2106);
  later ones are clamped there, which only keeps an entry longer.
* **A first load** is staged (tokens/revocation_staging.py: 2**10 stages, each the buckets
  sharing the low bits of their number) and `settle` moves each stage into its buckets
  later, merging copies and counting horizons; a bucket is only read or changed entry by
  entry once its stage is settled (`_settle_for`).

What a record means (which triple) is the set's business; this knows records as bytes only.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from sidecar.tokens.horizon_counts import HorizonCounts
from sidecar.tokens.revocation_records import SEP as _SEP
from sidecar.tokens.revocation_staging import STAGE_BITS, STAGE_MASK, Staging

BUCKET_BITS = 14
MASK = (1 << BUCKET_BITS) - 1
MAX_HORIZON = 0xFFFFFFFF
_NEVER = MAX_HORIZON + 1


class Buckets:
    """Records and horizons in buckets; see the module docstring."""

    def __init__(self) -> None:
        self._blobs: list[bytearray | None] = [None] * (MASK + 1)
        self._horizons: list[array[int] | None] = [None] * (MASK + 1)
        self._earliest = array("q", [_NEVER]) * (MASK + 1)
        self._len = 0
        self._counts = HorizonCounts()
        # The first load's records until settled (tokens/revocation_staging.py); None after.
        self._staged: Staging | None = None

    def __len__(self) -> int:
        """Entries held, counting twice a triple staged twice until it is settled."""
        return self._len

    def count_from(self, minute_start: int) -> int:
        """How many entries have `expires_at >= minute_start` (a multiple of 60). Staged
        records are counted when settled; when none is staged twice (a snapshot's) they are
        counted where they are, else this settles them first (the store sync awaits the
        settling in slices before it asks: this is only the fallback)."""
        staged = self._staged
        if staged is not None and staged.unique:
            return self._counts.count_from(minute_start) + staged.count_from(minute_start)
        self._settle_all()
        return self._counts.count_from(minute_start)

    @property
    def counted(self) -> bool:
        """Whether `count_from` answers without settling anything first."""
        return self._staged is None or self._staged.unique

    @property
    def settled(self) -> bool:
        """Whether no record is staged (every stage settled: `settle`)."""
        return self._staged is None

    def settle(self, start: int, stop: int) -> int:
        """Move the records of stages [start, stop) into their buckets (tokens/
        revocation_staging.py), merging the copies of a triple held twice (the later horizon
        wins), and count their horizons and set those buckets' earliest horizons, which
        staging leaves to this; returns how many copies were dropped."""
        staged = self._staged
        if staged is None:
            return 0
        dropped = 0
        for stage in range(max(start, 0), min(stop, STAGE_MASK + 1)):
            if staged.staged(stage):
                dropped += self._settle(staged, stage)
        if not staged.held:
            self._staged = None
        return dropped

    def _stage(self, bodies: Sequence[bytes], untils: Sequence[int], *, unique: bool) -> None:
        """Stage records (without their 0xFF) and their horizons (each in 0..2**32-1);
        `unique`: none is held already (a snapshot into an empty set)."""
        if self._staged is None:
            self._staged = Staging()
        self._staged.append(bodies, untils, unique=unique)
        self._len += len(bodies)

    def _settle_all(self) -> None:
        """Settle every stage now (for the readers that need every bucket as it will be)."""
        self.settle(0, STAGE_MASK + 1)

    def _settle_for(self, b: int) -> None:
        """Settle the stage bucket `b` belongs to, if it is staged (before `b` is changed
        or read entry by entry)."""
        staged = self._staged
        if staged is not None and staged.staged(b & STAGE_MASK):
            self._settle(staged, b & STAGE_MASK)
            if not staged.held:
                self._staged = None

    def _settle(self, staged: Staging, stage: int) -> int:
        taken = staged.take(stage)
        if taken is None:
            return 0
        bodies, untils = taken
        # The stage's buckets are b = stage + k * 2**STAGE_BITS, k < 2**(BUCKET_BITS - STAGE_BITS).
        ways = 1 << (BUCKET_BITS - STAGE_BITS)
        blobs, held, earliest, sep = self._blobs, self._horizons, self._earliest, _SEP
        for k in range(ways):  # entries settled before more were staged: merged with them
            b = stage + (k << STAGE_BITS)
            blob, horizons = blobs[b], held[b]
            if blob is not None and horizons is not None:
                bodies += bytes(memoryview(blob)[1:-1]).split(sep)
                untils += horizons
                for until in horizons:
                    self._counts.remove(until)
                blobs[b] = held[b] = None
                earliest[b] = _NEVER
        kept = dict(zip(bodies, untils, strict=True))
        dropped = len(bodies) - len(kept)
        if dropped:  # a scan's copies: keep the later horizon
            kept = {}
            for body, until in zip(bodies, untils, strict=True):
                if kept.get(body, -1) < until:
                    kept[body] = until
        group_of: list[list[bytes]] = [[] for _ in range(ways)]
        untils_of: list[list[int]] = [[] for _ in range(ways)]
        ks = map(STAGE_BITS.__rrshift__, map(MASK.__and__, map(hash, kept)))
        for k, body, until in zip(ks, kept, kept.values(), strict=True):
            group_of[k].append(body)
            untils_of[k].append(until)
        for k, group in enumerate(group_of):
            if group:
                b = stage + (k << STAGE_BITS)
                blobs[b] = bytearray(sep + sep.join(group) + sep)
                held[b] = array("I", untils_of[k])
                earliest[b] = min(untils_of[k])
        self._counts.add_all(kept.values())
        self._len -= dropped
        return dropped

    def export(self, start: int, stop: int) -> tuple[bytes, bytes]:
        """Buckets [start, stop) as `load` takes them: the records (`0xFF body` each, in
        bucket order) and their horizons (native `array('I')` bytes, in the same order).
        Codes refer to `issuers`, read after the last `export` (it only grows). Settles any
        staged record first (a snapshot holds each triple once)."""
        self._settle_all()
        records: list[bytes] = []
        horizons: list[bytes] = []
        for b in range(start, stop):
            blob, until = self._blobs[b], self._horizons[b]
            if blob is not None and until is not None:
                records.append(bytes(blob[:-1]))
                horizons.append(until.tobytes())
        return b"".join(records), b"".join(horizons)

    def _lengthen(self, b: int, i: int, until: int) -> None:
        horizons = self._horizons[b]
        if horizons is not None and horizons[i] < until:
            self._counts.remove(horizons[i])
            horizons[i] = until
            self._counts.add(until)

    def purge(self, now: int, start: int = 0, stop: int = MASK + 1) -> int:
        """Forget entries with `expires_at <= now` in buckets [start, stop); returns how many.
        Only buckets whose earliest horizon has passed are rewritten. Staged records are
        left alone (kept longer, never less): a later purge finds them settled."""
        dropped = 0
        earliest = self._earliest
        for b in range(start, stop):
            if earliest[b] <= now:
                dropped += self._purge_bucket(b, now)
        return dropped

    def _purge_bucket(self, b: int, now: int) -> int:
        blob, horizons = self._blobs[b], self._horizons[b]
        if blob is None or horizons is None:
            self._earliest[b] = _NEVER
            return 0
        bodies = bytes(blob[1:-1]).split(_SEP)
        kept = []
        for body, until in zip(bodies, horizons, strict=True):
            if until > now:
                kept.append((body, until))
            else:
                self._counts.remove(until)
        dropped = len(bodies) - len(kept)
        self._len -= dropped
        if not kept:
            self._blobs[b] = self._horizons[b] = None
            self._earliest[b] = _NEVER
            return dropped
        self._blobs[b] = bytearray(_SEP + _SEP.join(body for body, _ in kept) + _SEP)
        new_horizons = array("I", (until for _, until in kept))
        self._horizons[b] = new_horizons
        self._earliest[b] = min(new_horizons)
        return dropped

    @property
    def buckets(self) -> int:
        return MASK + 1

    def nbytes(self) -> int:
        """Bytes held by the records and horizons (buffers only, not object headers)."""
        total = 0 if self._staged is None else self._staged.nbytes()
        for blob, horizons in zip(self._blobs, self._horizons, strict=True):
            if blob is not None and horizons is not None:
                total += len(blob) + horizons.itemsize * len(horizons)
        return total
