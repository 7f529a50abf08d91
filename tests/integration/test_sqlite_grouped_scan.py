"""The SQLite store's first-load scan (`scan_revocation_groups`, sidecar/store/
sqlite_revocations.py) gives back exactly the bytes the file holds and every live entry once,
also for keys this code does not write (a NUL, an encoded surrogate, bytes that are not UTF-8,
0xFF bytes) at page boundaries inside and between groups: its tokens carry the last key's
bytes. Also pinned: each page is read with the `now` it is asked with, and a scan cut by a
close is unavailable.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import pytest

from sidecar.errors import StoreUnavailableError
from sidecar.store.base import Revocation
from sidecar.store.sqlite import SqliteTokenStore
from tests.contract.test_token_store import ISS, NOW, _later

Entry = tuple[str, str, bytes, int]

# What another writer may have left in the TEXT column (bytes written with CAST ... AS TEXT).
_RAW_KEYS = (b"\x00", b"a\x00b", b"\xed\xa0\x80", b"\xc3", b"a\xffb", b"\xff", b"\xff\xff")


async def _store(path: Path) -> SqliteTokenStore:
    store = SqliteTokenStore(path)
    await store.open()
    return store


async def _grouped(store: SqliteTokenStore, now: int, limit: int) -> tuple[list[Entry], int]:
    """Every entry the scan gives (as a list: a duplicate would show), and how many pages."""
    token, found, pages = "", list[Entry](), 0
    for _ in range(10_000):
        groups, token = await store.scan_revocation_groups(token, now, limit)
        pages += 1
        for kind, issuer, keys, untils in groups:
            assert len(keys) == len(untils)
            found += [(kind, issuer, k, u) for k, u in zip(keys, untils, strict=True)]
        if not token:
            return found, pages
    raise AssertionError("scan_revocation_groups never finished")


def _insert_raw(path: Path, entries: list[Entry]) -> None:
    raw = sqlite3.connect(path)
    with raw:
        raw.executemany(
            "INSERT INTO revocations (kind, issuer, key, expires_at)"
            " VALUES (?, ?, CAST(? AS TEXT), ?)",
            entries,
        )
    raw.close()


@pytest.mark.parametrize("limit", [1, 3, 7, 2_000])
async def test_grouped_scan_gives_every_live_entry_once_with_its_exact_bytes(
    tmp_path: Path, limit: int
) -> None:
    path = tmp_path / "tokens.db"
    store = await _store(path)
    try:
        written = [Revocation("jti", ISS, f"k{i:03}", NOW + 100 + i) for i in range(40)]
        written += [Revocation("family", ISS, f"f{i}", NOW + 5) for i in range(9)]
        odd = ["", "a b", "%41", "ünï", "\U0001f600", "x" * 300]
        written += [Revocation("jti", "iss two %", key, NOW + 2**40) for key in odd]
        written += [Revocation("jti", ISS, f"dead{i}", NOW) for i in range(6)]
        await store.restore(written, deadline_ms=_later())
        raw = [("jti", ISS, key, NOW + 50 + i) for i, key in enumerate(_RAW_KEYS)]
        _insert_raw(path, raw)
        expected = sorted(
            [
                (r.kind, r.issuer, r.key.encode(), r.expires_at)
                for r in written
                if r.key[:4] != "dead"
            ]
            + raw
        )
        found, pages = await _grouped(store, NOW, limit)
        assert sorted(found) == expected
        assert pages >= len(expected) // limit
    finally:
        await store.close()


async def test_each_page_leaves_out_what_expired_by_the_now_it_is_asked_with(
    tmp_path: Path,
) -> None:
    """A token names where the next page starts, not when: what expired in between is not
    handed over (a page read ahead with an earlier `now` would)."""
    store = await _store(tmp_path / "tokens.db")
    try:
        await store.restore(
            [Revocation("jti", ISS, f"k{i}", NOW + 10 + (i % 2) * 100) for i in range(20)],
            deadline_ms=_later(),
        )
        first, token = await store.scan_revocation_groups("", NOW, 4)
        assert token
        later, _ = await store.scan_revocation_groups(token, NOW + 50, 4)
        untils = [u for _, _, _, us in later for u in us]
        assert untils and all(u > NOW + 50 for u in untils)
        # The same token with the first `now` gets the page it names.
        again, _ = await store.scan_revocation_groups(token, NOW, 4)
        assert [k for _, _, ks, _ in again for k in ks] == [
            f"k{i}".encode() for i in (12, 13, 14, 15)
        ]
        assert len([k for _, _, ks, _ in first for k in ks]) == 4
    finally:
        await store.close()


async def test_a_scan_cut_by_a_close_is_unavailable_and_logs_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await _store(tmp_path / "tokens.db")
    await store.restore(
        [Revocation("jti", ISS, f"k{i}", NOW + 60) for i in range(5)], deadline_ms=_later()
    )
    _, token = await store.scan_revocation_groups("", NOW, 3)
    await asyncio.sleep(0.05)  # anything the store does in the background is done by now
    await store.close()
    with pytest.raises(StoreUnavailableError):
        await store.scan_revocation_groups(token, NOW, 3)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
