"""The keys of a first-load page as one byte string (`PackedKeys`, issue 16, stop 20).

A store that can hand a page's keys over already joined (SQLite builds each page as one row;
Redis's page is one reply whose members share a prefix) saves a split into a million key
objects and, on the revocation set's side, the join and split that put its own prefix before
each key: the set makes its records from the packed keys with one `replace` and one `split`
a page (tokens/revocation_set.py). To every other reader the keys are an ordinary sequence,
split on first use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

SEP = b"\xff"


class PackedKeys(Sequence[bytes]):
    """`count` keys joined by 0xFF, none of which holds a 0xFF byte (checked: a key that
    does would need another representation; UTF-8 never has one)."""

    __slots__ = ("_keys", "_n", "packed")

    def __init__(self, packed: bytes, count: int) -> None:
        if count < 0 or (packed.count(SEP) != count - 1 if count else packed != b""):
            raise ValueError("packed keys do not match their count (a key holding 0xFF?)")
        self.packed = packed
        self._n = count
        self._keys: list[bytes] | None = None

    def _split(self) -> list[bytes]:
        if self._keys is None:
            self._keys = self.packed.split(SEP) if self._n else []
        return self._keys

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        return self._split()[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._split())

    def __repr__(self) -> str:
        return f"PackedKeys({self._n} keys)"
