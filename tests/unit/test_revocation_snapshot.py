"""The revocation snapshot (issue 16): its format, and how a start uses it or refuses it.

The format tests work on bytes; the start tests run `StoreSync` against a real SQLite store
in a temporary directory and tell a load from the snapshot (`snapshot_loads`) from a full
read of the store (`full_reads`)."""

from __future__ import annotations

import os
import shutil
import stat
import time
from array import array
from pathlib import Path

import pytest

from sidecar.clock import SystemClock
from sidecar.store.base import Revocation, deadline_for
from sidecar.store.sqlite import SqliteTokenStore
from sidecar.tokens import revocation_snapshot
from sidecar.tokens.revocation import RevocationMirror
from sidecar.tokens.revocation_set import RevocationSet
from sidecar.tokens.revocation_snapshot import Snapshot, SnapshotError, SnapshotKeeper
from sidecar.tokens.store_sync import StoreSync

ISS = "https://issuer.example"
OTHER = "https://other.example"


def _entries(n: int, until: int) -> list[Revocation]:
    found = [Revocation("jti", ISS, f"jti-{i}", until + i) for i in range(n)]
    found += [Revocation("family", OTHER, f"fam-é-{i}", until) for i in range(n // 3)]
    return found


def _set_of(entries: list[Revocation]) -> RevocationSet:
    held = RevocationSet()
    held.add_rows((r.kind, r.issuer, r.key, r.expires_at) for r in entries)
    return held


def _snapshot_of(held: RevocationSet, epoch: str = "e1", cursor: str = "7") -> Snapshot:
    records, horizons = held.export(0, held.buckets)
    until = array("I")
    until.frombytes(horizons)
    return Snapshot("sqlite", epoch, cursor, held.issuers, records, until)


def _file_bytes(snapshot: Snapshot) -> bytes:
    return b"".join(revocation_snapshot.encode(snapshot))


def _loaded(snapshot: Snapshot) -> RevocationSet:
    held = RevocationSet()
    for _ in held.load(snapshot.issuers, snapshot.records, snapshot.horizons):
        pass
    return held


def test_a_snapshot_round_trips_every_entry_with_its_horizon(tmp_path: Path) -> None:
    entries = _entries(3_000, int(time.time()) + 600)
    path = tmp_path / "revocations.snapshot"
    revocation_snapshot.write(path, _snapshot_of(_set_of(entries)))
    read = revocation_snapshot.read(path)
    assert read is not None
    assert (read.store, read.epoch, read.cursor, len(read)) == ("sqlite", "e1", "7", len(entries))
    held = _loaded(read)
    assert set(held) == set(entries)
    assert len(held) == len(entries)
    assert held.count_from(0) == len(entries)
    assert held.horizon("jti", ISS, "jti-5") == entries[5].expires_at
    assert not held.contains("jti", ISS, "jti-3000")


def test_the_file_is_owner_only_and_replaced_without_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "data" / "revocations.snapshot"
    revocation_snapshot.write(path, _snapshot_of(_set_of(_entries(10, 2_000_000_000))))
    revocation_snapshot.write(path, _snapshot_of(_set_of(_entries(20, 2_000_000_000))))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["revocations.snapshot"]
    read = revocation_snapshot.read(path)
    assert read is not None and len(read) == 20 + 20 // 3


def test_an_empty_set_round_trips(tmp_path: Path) -> None:
    read = revocation_snapshot.decode(_file_bytes(_snapshot_of(RevocationSet())))
    assert len(_loaded(read)) == 0


def test_a_buffer_read_from_the_store_decodes_as_the_file_does() -> None:
    data = _file_bytes(_snapshot_of(_set_of(_entries(50, 2_000_000_000))))
    assert revocation_snapshot.decode(bytearray(data)) == revocation_snapshot.decode(data)
    with pytest.raises(SnapshotError):
        revocation_snapshot.decode(bytearray(data[:-1]))


def test_no_file_is_no_snapshot(tmp_path: Path) -> None:
    assert revocation_snapshot.read(tmp_path / "absent") is None


def test_a_fifo_where_the_snapshot_was_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the start waited for ever."""
    path = tmp_path / "revocations.snapshot"
    os.mkfifo(path)
    with pytest.raises(SnapshotError, match="not a regular file"):
        revocation_snapshot.read(path)


def test_every_damaged_byte_is_refused() -> None:
    data = _file_bytes(_snapshot_of(_set_of(_entries(50, 2_000_000_000))))
    for at in range(0, len(data), max(1, len(data) // 400)):
        damaged = bytearray(data)
        damaged[at] ^= 0x20
        with pytest.raises(SnapshotError):
            revocation_snapshot.decode(bytes(damaged))


def test_every_truncation_is_refused() -> None:
    data = _file_bytes(_snapshot_of(_set_of(_entries(50, 2_000_000_000))))
    for length in [*range(0, 64), *range(64, len(data), 7)]:
        with pytest.raises(SnapshotError):
            revocation_snapshot.decode(data[:length])


def test_records_that_do_not_fit_their_issuers_are_refused_by_the_load() -> None:
    snapshot = _snapshot_of(_set_of(_entries(30, 2_000_000_000)))
    with pytest.raises(ValueError):
        _loaded(Snapshot("sqlite", "e", "1", [ISS], snapshot.records, snapshot.horizons))
    with pytest.raises(ValueError):
        _loaded(Snapshot("sqlite", "e", "1", snapshot.issuers, snapshot.records, array("I")))


def test_appended_duplicates_are_merged_keeping_the_later_horizon() -> None:
    held = RevocationSet()
    held.append_group("jti", ISS, [b"a", b"b", b"a"], [100, 50, 300])
    held.append_group("jti", ISS, [b"a"], [200])
    assert held.settle(0, held.buckets) == 2
    assert len(held) == 2
    assert held.horizon("jti", ISS, "a") == 300 and held.horizon("jti", ISS, "b") == 50
    assert held.count_from(0) == 2
    assert held.purge(299) == 1 and list(held) == [Revocation("jti", ISS, "a", 300)]


# --- a start with a snapshot, against a real SQLite store ---------------------------------


async def _revoke(store: SqliteTokenStore, key: str) -> None:
    revocation = Revocation("jti", ISS, key, int(time.time()) + 600)
    await store.revoke(revocation, deadline_ms=deadline_for(time.time(), 5))


async def _open(path: Path) -> SqliteTokenStore:
    store = SqliteTokenStore(path)
    await store.open()
    return store


async def _start(store: SqliteTokenStore, snapshot: Path) -> tuple[StoreSync, RevocationMirror]:
    """A sidecar's start: a fresh mirror, its first reconciliation."""
    mirror = RevocationMirror()
    sync = StoreSync(store, mirror, SystemClock())
    sync.use_snapshot(snapshot, "sqlite")
    await sync.reconcile()
    return sync, mirror


def _keeper(sync: StoreSync) -> SnapshotKeeper:
    assert sync.snapshot is not None
    return sync.snapshot


async def _run_once(db: Path, snapshot: Path, keys: list[str]) -> None:
    """A first sidecar: revokes `keys`, then stops (which writes the snapshot)."""
    store = await _open(db)
    try:
        sync, _ = await _start(store, snapshot)
        for key in keys:
            await _revoke(store, key)
        await sync.reconcile()
        assert await sync.save_snapshot()
    finally:
        await store.close()


async def test_a_start_loads_the_snapshot_then_reads_what_was_written_after_it(
    tmp_path: Path,
) -> None:
    db, snapshot = tmp_path / "state.db", tmp_path / "revocations.snapshot"
    await _run_once(db, snapshot, ["before-1", "before-2"])
    store = await _open(db)
    try:
        await _revoke(store, "after")  # by another sidecar while this one was down
        sync, mirror = await _start(store, snapshot)
        assert (_keeper(sync).loads, sync.full_reads) == (1, 0)
        assert all(mirror.is_revoked(ISS, key, "") for key in ("before-1", "before-2", "after"))
        assert len(mirror) == 3 and mirror.loaded
        await _revoke(store, "later")  # and incremental reads go on from there
        await sync.reconcile()
        assert mirror.is_revoked(ISS, "later", "") and sync.full_reads == 0
    finally:
        await store.close()


async def test_a_snapshot_of_another_epoch_is_ignored(tmp_path: Path) -> None:
    db, snapshot = tmp_path / "state.db", tmp_path / "revocations.snapshot"
    await _run_once(db, snapshot, ["lost"])
    db.unlink()  # the store lost its data: a new file is a new epoch
    store = await _open(db)
    try:
        await _revoke(store, "new")
        sync, mirror = await _start(store, snapshot)
        assert (_keeper(sync).loads, sync.full_reads, sync.restored) == (0, 1, 0)
        assert mirror.is_revoked(ISS, "new", "") and not mirror.is_revoked(ISS, "lost", "")
        # Nothing written back from the snapshot.
        assert [r.key for r in await store.revocations(int(time.time()))] == ["new"]
    finally:
        await store.close()


async def test_a_snapshot_whose_cursor_the_store_cannot_follow_is_ignored(
    tmp_path: Path,
) -> None:
    db, snapshot = tmp_path / "state.db", tmp_path / "revocations.snapshot"
    backup = tmp_path / "backup.db"
    await _run_once(db, snapshot, ["kept"])
    store = await _open(db)
    await store.close()
    shutil.copyfile(db, backup)  # same epoch, an older sequence
    await _run_once(db, snapshot, ["after-backup"])
    backup.replace(db)  # restored from the backup: the snapshot's cursor is ahead of it
    store = await _open(db)
    try:
        sync, mirror = await _start(store, snapshot)
        assert (_keeper(sync).loads, sync.full_reads, sync.restored) == (0, 1, 0)
        assert mirror.is_revoked(ISS, "kept", "") and not mirror.is_revoked(ISS, "after-backup", "")
        assert len(mirror) == 1
    finally:
        await store.close()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "other-store"])
async def test_a_bad_snapshot_never_fails_the_start(tmp_path: Path, damage: str) -> None:
    db, snapshot = tmp_path / "state.db", tmp_path / "revocations.snapshot"
    await _run_once(db, snapshot, ["a", "b"])
    data = snapshot.read_bytes()
    if damage == "truncate":
        snapshot.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        snapshot.write_bytes(data[:40] + bytes([data[40] ^ 1]) + data[41:])
    elif damage == "garbage":
        snapshot.write_bytes(os.urandom(4096))
    store = await _open(db)
    try:
        mirror = RevocationMirror()
        sync = StoreSync(store, mirror, SystemClock())
        sync.use_snapshot(snapshot, "redis" if damage == "other-store" else "sqlite")
        await sync.reconcile()
        assert (_keeper(sync).loads, sync.full_reads) == (0, 1)
        assert mirror.is_revoked(ISS, "a", "") and mirror.is_revoked(ISS, "b", "")
    finally:
        await store.close()


async def test_the_snapshot_is_written_at_the_first_poll_after_a_full_load(
    tmp_path: Path,
) -> None:
    db, snapshot = tmp_path / "state.db", tmp_path / "revocations.snapshot"
    store = await _open(db)
    try:
        await _revoke(store, "x")
        sync, _ = await _start(store, snapshot)
        assert not snapshot.exists()  # not on the start's own time
        await sync.reconcile()
        assert snapshot.exists() and _keeper(sync).written == 1
        await sync.reconcile()  # the cursor did not move: nothing to write
        assert _keeper(sync).written == 1
    finally:
        await store.close()
