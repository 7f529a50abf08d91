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

What a record means (which triple) is the set's business; this knows records as bytes only.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from sidecar.tokens.horizon_counts import HorizonCounts
from sidecar.tokens.revocation_records import SEP as _SEP

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

    def __len__(self) -> int:
        return self._len

    def count_from(self, minute_start: int) -> int:
        """How many entries have `expires_at >= minute_start` (a multiple of 60)."""
        return self._counts.count_from(minute_start)

    def _bucket(self, bodies: list[bytes], untils: Sequence[int]) -> None:
        """Append records (without their 0xFF) and horizons, each bucket's share with one
        join: a hash and two list appends per record instead of a bucket append each."""
        blobs, held, earliest, mask, sep = self._blobs, self._horizons, self._earliest, MASK, _SEP
        group_of: list[list[bytes]] = [[] for _ in range(mask + 1)]
        untils_of: list[list[int]] = [[] for _ in range(mask + 1)]
        for body, until in zip(bodies, untils, strict=True):
            b = hash(body) & mask
            group_of[b].append(body)
            untils_of[b].append(until)
        for b, group in enumerate(group_of):
            if group:
                blob, group_untils = blobs[b], untils_of[b]
                if blob is None:
                    blobs[b] = bytearray(sep + sep.join(group) + sep)
                    held[b] = array("I", group_untils)
                else:
                    blob += sep.join(group)
                    blob += sep
                    held[b].extend(group_untils)  # type: ignore[union-attr]  # set with the blob
                earliest[b] = min(earliest[b], min(group_untils))
        self._counts.add_all(untils)
        self._len += len(bodies)

    def dedupe(self, start: int, stop: int) -> int:
        """Merge the triples held twice in buckets [start, stop) (after `append_group`),
        keeping the later horizon, and set those buckets' earliest horizons (which
        `append_group` leaves to this pass); returns how many copies were dropped."""
        dropped = 0
        for b in range(start, stop):
            blob, horizons = self._blobs[b], self._horizons[b]
            if blob is None or horizons is None:
                continue
            self._earliest[b] = min(horizons)
            bodies = bytes(blob)[1:-1].split(_SEP)
            if len(set(bodies)) == len(bodies):
                continue
            kept: dict[bytes, int] = {}
            for body, until in zip(bodies, horizons, strict=True):
                if body in kept:
                    dropped += 1
                    self._counts.remove(min(kept[body], until))
                    until = max(kept[body], until)
                kept[body] = until
            self._blobs[b] = bytearray(_SEP + _SEP.join(kept) + _SEP)
            self._horizons[b] = array("I", kept.values())
            self._earliest[b] = min(kept.values())
        self._len -= dropped
        return dropped

    def export(self, start: int, stop: int) -> tuple[bytes, bytes]:
        """Buckets [start, stop) as `load` takes them: the records (`0xFF body` each, in
        bucket order) and their horizons (native `array('I')` bytes, in the same order).
        Codes refer to `issuers`, read after the last `export` (it only grows)."""
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
        Only buckets whose earliest horizon has passed are rewritten."""
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
        total = 0
        for blob, horizons in zip(self._blobs, self._horizons, strict=True):
            if blob is not None and horizons is not None:
                total += len(blob) + horizons.itemsize * len(horizons)
        return total
