"""A compact, exact set of revocations: about 30 bytes per entry instead of ~450 (issue 16).

A dict of `(kind, iss, key) -> expires_at` costs a tuple, three strings and an int per entry:
~440 MiB for a million live revocations, and a reload briefly doubles it. Here an entry is one
record in a byte string plus four bytes of horizon:

* **Records, exact**: `0xFF kind issuer-code key-utf8`, where the issuer is interned to a
  3-byte code (a deployment has a handful of issuers) and the key is the jti or family id in
  UTF-8 (`surrogatepass`, so any Python string round-trips). 0xFF never occurs in UTF-8 and
  every code byte is below 0xF0, so 0xFF marks record boundaries only: a search for
  `0xFF record 0xFF` matches exactly that record, never a part of another. No digest, so no
  collision and no false positive: a lookup answers "revoked" only for the very triple
  recorded, and the triple can be written back to a store that lost it (issue 13).
* **Buckets**: records are spread over 2**14 buckets by Python's keyed string hash (SipHash,
  seeded per process), each a `bytearray` of records with a parallel `array('I')` of horizons.
  At a million entries a bucket holds ~60 records (~2 KiB), so a lookup is one hash and one
  C-level search of a short string, an insertion one append, and no operation ever touches
  more than one bucket: there is no rebuild of the whole set to pause the event loop or the
  collector (the records are not Python objects the collector tracks).
* **Expiry**: each bucket keeps its earliest horizon, so `purge` rewrites only buckets holding
  something expired. Horizons are stored as unsigned 32-bit epoch seconds (until 2106);
  later ones are clamped there, which only keeps an entry longer.

Hash flooding cannot make a lookup wrong, only slower (a longer bucket): the hash is keyed per
process unless PYTHONHASHSEED is fixed, which production must not do.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from sidecar.store.base import Revocation, RevocationKind

BUCKET_BITS = 14
_MASK = (1 << BUCKET_BITS) - 1
_SEP = b"\xff"
_KIND_CODES: dict[str, bytes] = {"jti": b"\x01", "family": b"\x02"}
_KIND_NAMES: dict[int, RevocationKind] = {1: "jti", 2: "family"}
_MAX_ISSUERS = 0xF0**3
_MAX_HORIZON = 0xFFFFFFFF
_NEVER = _MAX_HORIZON + 1
# Bytes of records bucketed per step of `load` (a snapshot, ~150,000 entries): bounds the
# transient objects of a load and how long the event loop waits.
_LOAD_BYTES = 4 << 20

Row = tuple[RevocationKind, str, str, int]


class RevocationSet:
    """`(kind, iss, key) -> expires_at` with exact membership; see the module docstring."""

    def __init__(self) -> None:
        self._codes: dict[str, bytes] = {}
        self._issuers: list[str] = []
        self._blobs: list[bytearray | None] = [None] * (_MASK + 1)
        self._horizons: list[array[int] | None] = [None] * (_MASK + 1)
        self._earliest = array("q", [_NEVER]) * (_MASK + 1)
        self._len = 0
        # How many entries have their horizon in each minute (epoch minute -> count): lets a
        # caller count entries beyond a minute boundary without a scan (`count_from`).
        self._minutes: dict[int, int] = {}

    def __len__(self) -> int:
        return self._len

    def _body(self, kind: str, issuer: str, key: str) -> bytes | None:
        code = self._codes.get(issuer)
        if code is None:
            return None  # an issuer never recorded
        return _KIND_CODES[kind] + code + key.encode("utf-8", "surrogatepass")

    def _intern(self, issuer: str) -> bytes:
        n = len(self._issuers)
        if n >= _MAX_ISSUERS:
            raise OverflowError("too many distinct issuers in the revocation set")
        code = bytes((n // 0xF0 // 0xF0, n // 0xF0 % 0xF0, n % 0xF0))
        self._codes[issuer] = code
        self._issuers.append(issuer)
        return code

    def contains(self, kind: str, issuer: str, key: str) -> bool:
        body = self._body(kind, issuer, key)
        if body is None:
            return False  # an issuer never recorded
        blob = self._blobs[hash(body) & _MASK]
        return blob is not None and _SEP + body + _SEP in blob

    def horizon(self, kind: str, issuer: str, key: str) -> int | None:
        """The recorded horizon, or None when the triple is not recorded."""
        body = self._body(kind, issuer, key)
        if body is None:
            return None
        b = hash(body) & _MASK
        blob, horizons = self._blobs[b], self._horizons[b]
        if blob is None or horizons is None:
            return None
        at = blob.find(_SEP + body + _SEP)
        return None if at < 0 else horizons[blob.count(_SEP, 0, at)]

    def add(self, kind: str, issuer: str, key: str, expires_at: int) -> bool:
        """Record (keeping the later horizon if known); True when the triple is new."""
        return bool(self.add_rows(((kind, issuer, key, expires_at),)))  # type: ignore[arg-type]

    def _uncount(self, until: int) -> None:
        minute = until // 60
        left = self._minutes[minute] - 1
        if left:
            self._minutes[minute] = left
        else:
            del self._minutes[minute]

    def count_from(self, minute_start: int) -> int:
        """How many entries have `expires_at >= minute_start` (a multiple of 60)."""
        first = minute_start // 60
        return sum(n for minute, n in self._minutes.items() if minute >= first)

    def add_rows(self, rows: Iterable[Row]) -> list[Row]:
        """`add` for many (the same steps, inlined: this is the bulk-load path); returns the
        rows whose triple was new."""
        codes, blobs, horizons, earliest = self._codes, self._blobs, self._horizons, self._earliest
        minutes, kinds, sep, mask = self._minutes, _KIND_CODES, _SEP, _MASK
        new: list[Row] = []
        append = new.append
        for row in rows:
            kind, issuer, key, until = row
            code = codes.get(issuer) or self._intern(issuer)
            body = kinds[kind] + code + key.encode("utf-8", "surrogatepass")
            if until > _MAX_HORIZON or until < 0:
                until = 0 if until < 0 else _MAX_HORIZON
            b = hash(body) & mask
            blob = blobs[b]
            if blob is None:
                blobs[b] = bytearray(sep + body + sep)
                horizons[b] = array("I", (until,))
                earliest[b] = until
            else:
                needle = sep + body + sep
                at = blob.find(needle)
                if at >= 0:
                    self._lengthen(b, blob.count(sep, 0, at), until)
                    continue
                blob += needle[1:]
                horizons[b].append(until)  # type: ignore[union-attr]  # set with the blob
                if until < earliest[b]:
                    earliest[b] = until
            minute = until // 60
            minutes[minute] = minutes.get(minute, 0) + 1
            append(row)
        self._len += len(new)
        return new

    def append_group(
        self, kind: RevocationKind, issuer: str, keys: Sequence[bytes], untils: Sequence[int]
    ) -> None:
        """The first load's fast path: entries of one kind and issuer (keys in UTF-8), taken
        in without `add_rows`' search for each triple (most of an insertion's cost, a scan
        of the bucket). A triple appended twice is held twice until `dedupe` has passed over
        its bucket; lookups stay exact meanwhile (a copy answers "revoked" only for a triple
        that is), but `len` and `horizon` may not be."""
        prefix = _KIND_CODES[kind] + (self._codes.get(issuer) or self._intern(issuer))
        if untils and (max(untils) > _MAX_HORIZON or min(untils) < 0):
            untils = [min(max(until, 0), _MAX_HORIZON) for until in untils]
        blobs, horizons, earliest, sep, mask = (
            self._blobs,
            self._horizons,
            self._earliest,
            _SEP,
            _MASK,
        )
        for key, until in zip(keys, untils, strict=True):
            body = prefix + key
            b = hash(body) & mask
            blob = blobs[b]
            if blob is None:
                blobs[b] = bytearray(sep + body + sep)
                horizons[b] = array("I", (until,))
                earliest[b] = until
            else:
                blob += body
                blob += sep
                horizons[b].append(until)  # type: ignore[union-attr]  # set with the blob
                if until < earliest[b]:
                    earliest[b] = until
        minutes = self._minutes
        for minute, n in Counter(map((60).__rfloordiv__, untils)).items():
            minutes[minute] = minutes.get(minute, 0) + n
        self._len += len(keys)

    def dedupe(self, start: int, stop: int) -> int:
        """Merge the triples held twice in buckets [start, stop) (after `append_group`),
        keeping the later horizon; returns how many copies were dropped."""
        dropped = 0
        for b in range(start, stop):
            blob, horizons = self._blobs[b], self._horizons[b]
            if blob is None or horizons is None:
                continue
            bodies = bytes(blob)[1:-1].split(_SEP)
            if len(set(bodies)) == len(bodies):
                continue
            kept: dict[bytes, int] = {}
            for body, until in zip(bodies, horizons, strict=True):
                if body in kept:
                    dropped += 1
                    self._uncount(min(kept[body], until))
                    until = max(kept[body], until)
                kept[body] = until
            self._blobs[b] = bytearray(_SEP + _SEP.join(kept) + _SEP)
            self._horizons[b] = array("I", kept.values())
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

    @property
    def issuers(self) -> list[str]:
        """The interned issuers, in code order (a copy)."""
        return list(self._issuers)

    def load(self, issuers: Sequence[str], records: bytes, horizons: array[int]) -> Iterator[None]:
        """Fill this empty set from `export`'s output (a snapshot written by another process,
        whose buckets differ: Python's string hash is seeded per process, so every record is
        bucketed again here, about `_LOAD_BYTES` of records at a time, each bucket's share
        appended with one join), yielding after each step so the caller can give the event
        loop a turn. Raises ValueError when the records do not fit the issuers and horizons
        (the set is then partly filled: drop it)."""
        if self._len or self._issuers:
            raise ValueError("load needs an empty set")
        for issuer in issuers:
            self._intern(issuer)
        valid = [
            _SEP + kind + code for kind in _KIND_CODES.values() for code in self._codes.values()
        ]
        count = records.count(_SEP)
        if count != len(horizons) or records[:1] not in (b"", _SEP):
            raise ValueError("records and horizons differ in number")
        if sum(records.count(prefix) for prefix in valid) != count:
            raise ValueError("a record names an unknown kind or issuer")
        blobs, held, earliest, mask, sep = self._blobs, self._horizons, self._earliest, _MASK, _SEP
        bodies: list[list[bytes]] = [[] for _ in range(mask + 1)]
        untils: list[list[int]] = [[] for _ in range(mask + 1)]
        at = first = 0
        while at < len(records):
            stop = records.find(sep, at + _LOAD_BYTES)
            stop = len(records) if stop < 0 else stop
            chunk = records[at + 1 : stop].split(sep)
            for body, until in zip(chunk, horizons[first : first + len(chunk)], strict=True):
                b = hash(body) & mask
                bodies[b].append(body)
                untils[b].append(until)
            for b in range(mask + 1):
                group = bodies[b]
                if not group:
                    continue
                blob = blobs[b]
                if blob is None:
                    blobs[b] = bytearray(sep + sep.join(group) + sep)
                    held[b] = array("I", untils[b])
                else:
                    blob += sep.join(group)
                    blob += sep
                    held[b].extend(untils[b])  # type: ignore[union-attr]  # set with the blob
                group.clear()
                untils[b].clear()
            at, first = stop, first + len(chunk)
            self._len = first
            yield
        for b in range(mask + 1):
            until_b = held[b]
            if until_b is not None:
                earliest[b] = min(until_b)
        for minute, n in Counter(map((60).__rfloordiv__, horizons)).items():
            self._minutes[minute] = self._minutes.get(minute, 0) + n

    def _lengthen(self, b: int, i: int, until: int) -> None:
        horizons = self._horizons[b]
        if horizons is not None and horizons[i] < until:
            self._uncount(horizons[i])
            horizons[i] = until
            minute = until // 60
            self._minutes[minute] = self._minutes.get(minute, 0) + 1

    def purge(self, now: int, start: int = 0, stop: int = _MASK + 1) -> int:
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
                self._uncount(until)
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
        return _MASK + 1

    def bucket_entries(self, b: int) -> list[Revocation]:
        """The entries of bucket `b`, decoded (a snapshot: later changes are not seen)."""
        blob, horizons = self._blobs[b], self._horizons[b]
        if blob is None or horizons is None:
            return []
        issuers = self._issuers
        found = []
        for body, until in zip(bytes(blob[1:-1]).split(_SEP), horizons, strict=True):
            code = body[1:4]
            index = (code[0] * 0xF0 + code[1]) * 0xF0 + code[2]
            key = body[4:].decode("utf-8", "surrogatepass")
            found.append(Revocation(_KIND_NAMES[body[0]], issuers[index], key, until))
        return found

    def __iter__(self) -> Iterator[Revocation]:
        for b in range(_MASK + 1):
            yield from self.bucket_entries(b)

    def nbytes(self) -> int:
        """Bytes held by the records and horizons (buffers only, not object headers)."""
        total = 0
        for blob, horizons in zip(self._blobs, self._horizons, strict=True):
            if blob is not None and horizons is not None:
                total += len(blob) + horizons.itemsize * len(horizons)
        return total
