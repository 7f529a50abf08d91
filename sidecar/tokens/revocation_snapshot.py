"""A local copy of the revocation mirror, so a restart loads a million entries in a few large
reads instead of a full read of the store (issue 16: start under 2 s).

A full load costs ~1-3 µs of CPU per entry (fetch, decode, insert); a snapshot is the mirror's
own records written out as they are held (`RevocationSet.export`), so reading it back is one
file read, one checksum and one re-bucketing pass (the buckets depend on Python's per-process
string hash, so they cannot be kept as they are).

What makes it safe (a snapshot may only ever add revocations the store has or had, never make
a revoked token accepted):

* It records the store's epoch and the position (`cursor`) up to which the mirror had read the
  store when the copy began; every entry written up to that position is in it (entries leave
  the mirror only by their own horizon). After loading it the sidecar reads the store's writes
  since that cursor exactly as a running sidecar does (tokens/store_sync.py); when the store
  can no longer vouch for them (feed trimmed, sequence gone back, fewer entries than held) or
  has another epoch (lost its data, or another store), the snapshot is dropped and the full
  load runs as if there were none: a snapshot never writes anything back.
* The file is owner-only (0600), replaced atomically (write, fsync, rename, fsync of the
  directory), and ends with a BLAKE2b digest of everything before it: a truncated or damaged
  file is refused and ignored, never half loaded. It is trusted like the SQLite file next to
  it: anyone who can write the data directory can write the store itself.

Format (version 1): MAGIC, u32 version, u32 header length (little-endian), a JSON header
(store kind, epoch, cursor, issuers in code order, entry count, byte order, records length),
the records (`0xFF kind issuer-code key` each), the horizons (`array('I')`, native order, as
named in the header), then the 32-byte digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import secrets
import stat
import struct
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sidecar.tokens.revocation import RevocationMirror

log = logging.getLogger(__name__)

MAGIC = b"authsidecar-revocations\n"
VERSION = 1
_HEAD = struct.Struct("<24sII")
_DIGEST_BYTES = 32
# A header is a few issuers and two positions: anything larger is not ours.
_MAX_HEADER = 1 << 20
# The snapshot is rewritten at most this often (when the cursor moved), besides at stop: a
# crash costs at most this much more incremental reading at the next start.
SNAPSHOT_EVERY_S = 300.0
# Buckets copied per loop turn when writing a snapshot (~60,000 entries at a million).
_COPY_STEP = 1024


class SnapshotError(ValueError):
    """The file is not a valid snapshot (truncated, damaged, another version or format)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    store: str
    epoch: str
    cursor: str
    issuers: Sequence[str]
    records: bytes
    horizons: array[int]

    def __len__(self) -> int:
        return len(self.horizons)


def encode(snapshot: Snapshot) -> list[bytes]:
    """The file's bytes, in parts (the records are not copied into one more buffer)."""
    s = snapshot
    header = json.dumps(
        {
            "store": s.store,
            "epoch": s.epoch,
            "cursor": s.cursor,
            "issuers": list(s.issuers),
            "count": len(s.horizons),
            "byteorder": sys.byteorder,
            "records": len(s.records),
        },
        separators=(",", ":"),
    ).encode()
    parts = [_HEAD.pack(MAGIC, VERSION, len(header)), header, s.records, s.horizons.tobytes()]
    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for part in parts:
        digest.update(part)
    parts.append(digest.digest())
    return parts


def decode(data: bytes | bytearray) -> Snapshot:
    """Parse and check a whole file's bytes; raises SnapshotError. A bytearray (the store's
    copy, tokens/revocation_snapshot_store.py) is read in place, not copied whole first."""
    if isinstance(data, bytes):
        return _parse(io.BytesIO(data), len(data))  # BytesIO shares a bytes object's buffer
    return _parse(_View(data), len(data))


class _Source(Protocol):
    def read(self, n: int, /) -> bytes: ...


class _View:
    """A buffer read part by part, each part copied once (as a file's would be)."""

    def __init__(self, data: bytearray) -> None:
        self._view, self._at = memoryview(data), 0

    def read(self, n: int) -> bytes:
        part = self._view[self._at : self._at + n]
        self._at += len(part)
        return part.tobytes()


def _parse(source: _Source, size: int) -> Snapshot:
    """Read a snapshot of `size` bytes part by part (no copy of the whole file is held),
    checking every length against `size` and the digest; raises SnapshotError."""

    def take(n: int) -> bytes:
        part = source.read(n)
        if len(part) != n:
            raise SnapshotError("truncated")
        return part

    if size < _HEAD.size + _DIGEST_BYTES:
        raise SnapshotError("truncated")
    head = take(_HEAD.size)
    magic, version, header_len = _HEAD.unpack(head)
    if magic != MAGIC or version != VERSION or header_len > _MAX_HEADER:
        raise SnapshotError(f"not a version {VERSION} revocation snapshot")
    header = take(min(header_len, size - _HEAD.size))
    try:
        fields = json.loads(header)
        store, epoch, cursor = str(fields["store"]), str(fields["epoch"]), str(fields["cursor"])
        issuers = [str(issuer) for issuer in fields["issuers"]]
        count, records_len = int(fields["count"]), int(fields["records"])
        byteorder = fields["byteorder"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError("unreadable header (truncated or damaged)") from exc
    horizons = array("I")
    horizons_len = count * horizons.itemsize
    if min(count, records_len) < 0 or (
        _HEAD.size + header_len + records_len + horizons_len + _DIGEST_BYTES != size
    ):
        raise SnapshotError("lengths do not add up (truncated or damaged)")
    records, until = take(records_len), take(horizons_len)
    digest = hashlib.blake2b(head, digest_size=_DIGEST_BYTES)
    for part in (header, records, until):
        digest.update(part)
    if digest.digest() != take(_DIGEST_BYTES):
        raise SnapshotError("checksum mismatch (truncated or damaged)")
    if byteorder != sys.byteorder:
        raise SnapshotError("written on a machine of another byte order")
    horizons.frombytes(until)
    return Snapshot(store, epoch, cursor, issuers, records, horizons)


def write(path: Path, snapshot: Snapshot) -> None:
    """Replace `path` atomically with `snapshot`, owner-only (run off the event loop)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in encode(snapshot):
                out.write(part)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read(path: Path) -> Snapshot | None:
    """The snapshot at `path`, None when there is none; raises SnapshotError when invalid
    or not a regular file (and OSError when it cannot be read).

    Opened non-blocking, as key files are (keys/loader.py): a FIFO put where the snapshot
    was would otherwise block `open` until a writer came, and the start with it. O_NONBLOCK
    changes nothing for a regular file's reads; anything else is refused after `fstat`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as source:
        status = os.fstat(source.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise SnapshotError("not a regular file")
        return _parse(source, status.st_size)


class SnapshotKeeper:
    """Where, when and for which store one mirror's snapshot is read and written. The caller
    (tokens/store_sync.py) holds the consistency: it takes `copy` under the lock that also
    guards its cursor, and loads a snapshot only as the first load, then reads from its
    cursor."""

    def __init__(self, path: Path, store_kind: str) -> None:
        self.path, self.store_kind = path, store_kind
        self._saved_cursor: str | None = None
        self._saved_at: float | None = None
        self._warned = False
        self.loads = 0  # starts loaded from the snapshot
        self.written = 0

    async def usable(self, epoch: str) -> Snapshot | None:
        """The snapshot, when there is one of this kind of store at `epoch` (why not:
        logged; a damaged file is one warning line, never a failed start)."""
        try:
            snapshot = await asyncio.to_thread(read, self.path)
        except (OSError, SnapshotError) as exc:
            log.warning(
                "revocation snapshot %s ignored (%s): loading from the store", self.path, exc
            )
            return None
        if snapshot is not None and (snapshot.store, snapshot.epoch) != (self.store_kind, epoch):
            log.info("revocation snapshot %s is of another store or epoch: ignored", self.path)
            return None
        return snapshot

    def used(self, snapshot: Snapshot, held: int, since: int) -> None:
        self.loads += 1
        self._saved_cursor, self._saved_at = snapshot.cursor, time.monotonic()
        log.info(
            "revocations: %d from the snapshot %s, %d more from the store's writes since it",
            held,
            self.path,
            since,
        )

    def ignored(self, why: str) -> None:
        log.info("revocation snapshot %s ignored (%s): loading from the store", self.path, why)

    def due(self, cursor: str | None, started: bool) -> bool:
        """After the start's own load (`started`: a later reconciliation), then every
        SNAPSHOT_EVERY_S, and only when the cursor moved since the last one."""
        if cursor is None or cursor == self._saved_cursor:
            return False
        if self._saved_at is None:
            return started
        return time.monotonic() - self._saved_at >= SNAPSHOT_EVERY_S

    @staticmethod
    async def copy(mirror: RevocationMirror) -> tuple[list[bytes], list[bytes], list[str]]:
        """The mirror's records and horizons, a bucket slice per loop turn, and its issuers
        (read after the copy: every code it holds is named)."""
        records: list[bytes] = []
        horizons: list[bytes] = []
        for start in range(0, mirror.buckets, _COPY_STEP):
            part, until = mirror.export(start, start + _COPY_STEP)
            records.append(part)
            horizons.append(until)
            await asyncio.sleep(0)
        return records, horizons, mirror.issuers

    def assemble(
        self, epoch: str, cursor: str, copied: tuple[list[bytes], list[bytes], list[str]]
    ) -> Snapshot:
        """One snapshot of `copy`'s parts (run off the event loop: it joins ~30 MB at a
        million), written to the file and offered to the store as it is: one copy, not two."""
        records, horizons, issuers = copied
        held = array("I")
        held.frombytes(b"".join(horizons))
        return Snapshot(self.store_kind, epoch, cursor, issuers, b"".join(records), held)

    async def write(self, snapshot: Snapshot) -> bool:
        """Write `snapshot` by a thread; False when it failed (logged once as a warning: a
        sidecar without a writable data directory still serves)."""
        self._saved_at = time.monotonic()
        try:
            await asyncio.to_thread(write, self.path, snapshot)
        except OSError as exc:
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "cannot write the revocation snapshot %s: %s", self.path, exc)
            return False
        self._saved_cursor = snapshot.cursor
        self.written += 1
        return True
