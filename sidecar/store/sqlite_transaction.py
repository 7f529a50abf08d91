"""One SQLite write transaction, with the write deadline of issue 13.

`BEGIN IMMEDIATE` takes the write lock before the first read, so two processes deciding on the
same row serialise; a SIGKILL mid-transaction leaves the old state (SQLite's journal is all or
nothing). The deadline is compared with the store's clock just before COMMIT: a write that
waited for the lock (or behind other calls on the worker thread) longer than its caller did
rolls back instead of being applied after the caller gave up.
"""

from __future__ import annotations

import sqlite3

from sidecar.clock import Clock
from sidecar.errors import StoreDeadlineError
from sidecar.store.rotation import past


class Transaction:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on any exception (then re-raised), and
    `ROLLBACK` + StoreDeadlineError when `deadline_ms` (if any) has passed by the time it
    would commit."""

    def __init__(
        self, db: sqlite3.Connection, deadline_ms: int | None = None, clock: Clock | None = None
    ) -> None:
        self._db = db
        self._deadline_ms = deadline_ms
        self._clock = clock

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            if self._late():
                self._rollback()
                raise StoreDeadlineError()
            try:
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            return
        self._rollback()

    def _late(self) -> bool:
        if self._deadline_ms is None or self._clock is None:
            return False
        return past(self._deadline_ms, self._clock.now())

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # The original error says more; sqlite rolls back on close anyway.
