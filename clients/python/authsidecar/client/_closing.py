"""`with` / `async with` for everything in this library that holds a channel, a thread or a
task: leaving the block calls `close()` (sync), or its closing coroutine (asyncio:
`close()`, or `aclose()` for the interceptor), whatever happened."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosing:
    async def _aclose(self) -> None:
        """The class's public closing coroutine (`close` or `aclose`)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._aclose()
