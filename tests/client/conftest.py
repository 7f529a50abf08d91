from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.sidecar import RunningSidecar, running_sidecar, short_tmpdir


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    with short_tmpdir() as path:
        yield path


@pytest.fixture
async def sidecar(data_dir: Path) -> AsyncIterator[RunningSidecar]:
    async with running_sidecar(data_dir, tokens={"audiences": ["svc-a", "svc-b"]}) as running:
        yield running
