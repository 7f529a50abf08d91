"""Parametrisation marks the test directories share, each defined once."""

from __future__ import annotations

import pytest

# Every client-library behaviour is pinned for both flavours: the blocking client (its calls on
# grpc's own threads) and the asyncio one (grpc.aio, on the test's loop). The test takes
# `aio: bool` and builds the flavour it names (tests/client/harness.py).
AIO = pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
