"""A compact, exact set of revocations: about 30 bytes per entry instead of ~450 (issue 16).

A dict of `(kind, iss, key) -> expires_at` costs a tuple, three strings and an int per entry:
~440 MiB for a million live revocations, and a reload briefly doubles it. Here an entry is one
record in a byte string plus four bytes of horizon:

* **Records, exact** (tokens/revocation_records.py): `kind issuer-code key-utf8`, separated by
  0xFF, which occurs in no record: a lookup answers "revoked" only for the very triple
  recorded (no digest, no false positive), and the triple can be decoded and written back.
* **Buckets and expiry** (tokens/revocation_buckets.py): records spread over 2**14 buckets
  by Python's keyed string hash, each a `bytearray` with a parallel `array('I')` of horizons,
  so no operation touches more than one bucket (no rebuild to pause the event loop or the
  collector), and `purge` rewrites only buckets holding something expired.

Hash flooding cannot make a lookup wrong, only slower (a longer bucket): the hash is keyed per
process unless PYTHONHASHSEED is fixed, which production must not do.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence

from sidecar.store.base import Revocation, RevocationKind
from sidecar.store.revocation_pages import PackedKeys
from sidecar.tokens.revocation_buckets import MASK as _MASK
from sidecar.tokens.revocation_buckets import MAX_HORIZON as _MAX_HORIZON
from sidecar.tokens.revocation_buckets import Buckets
from sidecar.tokens.revocation_records import KIND_CODES as _KIND_CODES
from sidecar.tokens.revocation_records import SEP as _SEP
from sidecar.tokens.revocation_records import IssuerCodes
from sidecar.tokens.revocation_staging import STAGE_MASK as _STAGE_MASK

# Bytes of records bucketed per step of `load` (a snapshot, ~150,000 entries): bounds the
# transient objects of a load and how long the event loop waits.
_LOAD_BYTES = 4 << 20

Row = tuple[RevocationKind, str, str, int]


class RevocationSet(Buckets):
    """`(kind, iss, key) -> expires_at` with exact membership; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self._issuers = IssuerCodes()

    def contains(self, kind: str, issuer: str, key: str) -> bool:
        body = self._issuers.body(kind, issuer, key)
        if body is None:
            return False  # an issuer never recorded
        h = hash(body)
        blob = self._blobs[h & _MASK]
        if blob is not None and _SEP + body + _SEP in blob:
            return True
        staged = self._staged  # the first load's records, until settled
        return staged is not None and staged.holds(h & _STAGE_MASK, _SEP + body + _SEP)

    def horizon(self, kind: str, issuer: str, key: str) -> int | None:
        """The recorded horizon, or None when the triple is not recorded."""
        body = self._issuers.body(kind, issuer, key)
        if body is None:
            return None
        b = hash(body) & _MASK
        self._settle_for(b)
        blob, horizons = self._blobs[b], self._horizons[b]
        if blob is None or horizons is None:
            return None
        at = blob.find(_SEP + body + _SEP)
        return None if at < 0 else horizons[blob.count(_SEP, 0, at)]

    def add(self, kind: str, issuer: str, key: str, expires_at: int) -> bool:
        """Record (keeping the later horizon if known); True when the triple is new."""
        return bool(self.add_rows(((kind, issuer, key, expires_at),)))  # type: ignore[arg-type]

    def add_rows(self, rows: Iterable[Row]) -> list[Row]:
        """`add` for many (the same steps, inlined: this is the bulk-load path); returns the
        rows whose triple was new."""
        codes, intern = self._issuers.codes, self._issuers.intern
        blobs, horizons, earliest = self._blobs, self._horizons, self._earliest
        minutes, kinds, sep, mask = self._counts.by_minute, _KIND_CODES, _SEP, _MASK
        settle = self._settle_for
        new: list[Row] = []
        append = new.append
        for row in rows:
            kind, issuer, key, until = row
            code = codes.get(issuer) or intern(issuer)
            body = kinds[kind] + code + key.encode("utf-8", "surrogatepass")
            if until > _MAX_HORIZON or until < 0:
                until = 0 if until < 0 else _MAX_HORIZON
            b = hash(body) & mask
            if self._staged is not None:
                settle(b)  # its staged copies first: one entry per triple, as before
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
        """The first load's fast path: entries of one kind and issuer (keys in UTF-8), staged
        (tokens/revocation_staging.py) without `add_rows`' search for each triple (most of
        an insertion's cost, a scan of the bucket). A triple appended twice is held twice
        until `settle` has passed over its stage; lookups stay exact meanwhile (a copy
        answers "revoked" only for a triple that is), `horizon` and `add_rows` settle the
        stage they touch first, `count_from` and `export` settle everything first, and
        `len` counts the copies until settled.

        A million rows go through here at a first start, so the per-row work is the least
        it can be (issue 16): the records are made by one join and one split of the page,
        their stages by `map`, and the loop only appends. A key holding 0xFF (no `str`
        encodes to one, so no lookup can name it) is dropped: it would break the records'
        framing."""
        if len(keys) != len(untils):
            raise ValueError("keys and horizons differ in number")
        if not keys:
            return
        prefix = _KIND_CODES[kind] + self._issuers.intern(issuer)
        sep = _SEP
        if isinstance(keys, PackedKeys):  # joined by the store already, none holding 0xFF
            bodies = (prefix + keys.packed.replace(sep, sep + prefix)).split(sep)
        else:
            bodies = (prefix + (sep + prefix).join(keys)).split(sep)
        if len(bodies) != len(keys):  # a key holding 0xFF: keep the others, in step
            kept = [(k, u) for k, u in zip(keys, untils, strict=True) if sep not in k]
            self.append_group(kind, issuer, [k for k, _ in kept], [u for _, u in kept])
            return
        if max(untils) > _MAX_HORIZON or min(untils) < 0:
            untils = [min(max(until, 0), _MAX_HORIZON) for until in untils]
        self._stage(bodies, untils, unique=False)

    @property
    def issuers(self) -> list[str]:
        """The interned issuers, in code order (a copy)."""
        return list(self._issuers.names)

    def load(self, issuers: Sequence[str], records: bytes, horizons: array[int]) -> Iterator[None]:
        """Fill this empty set from `export`'s output (a snapshot written by another process,
        whose buckets differ: Python's string hash is seeded per process, so every record is
        staged again here, about `_LOAD_BYTES` of records at a time, and settled later as a
        first load from the store is), yielding after each step so the caller can give the
        event loop a turn. Raises ValueError when the records do not fit the issuers and horizons
        (the set is then partly filled: drop it)."""
        if self._len or self._issuers.names:
            raise ValueError("load needs an empty set")
        self._issuers = IssuerCodes(issuers)
        valid = self._issuers.starts()
        count = records.count(_SEP)
        if count != len(horizons) or records[:1] not in (b"", _SEP):
            raise ValueError("records and horizons differ in number")
        if sum(records.count(prefix) for prefix in valid) != count:
            raise ValueError("a record names an unknown kind or issuer")
        at = first = 0
        while at < len(records):
            stop = records.find(_SEP, at + _LOAD_BYTES)
            stop = len(records) if stop < 0 else stop
            chunk = records[at + 1 : stop].split(_SEP)
            self._stage(chunk, horizons[first : first + len(chunk)], unique=True)
            at, first = stop, first + len(chunk)
            yield

    def bucket_entries(self, b: int) -> list[Revocation]:
        """The entries of bucket `b`, decoded (a snapshot: later changes are not seen);
        settles its stage first."""
        self._settle_for(b)
        blob, horizons = self._blobs[b], self._horizons[b]
        if blob is None or horizons is None:
            return []
        decode = self._issuers.decode
        return [
            Revocation(*decode(body), until)
            for body, until in zip(bytes(blob[1:-1]).split(_SEP), horizons, strict=True)
        ]

    def __iter__(self) -> Iterator[Revocation]:
        for b in range(_MASK + 1):
            yield from self.bucket_entries(b)
