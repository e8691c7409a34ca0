"""One HTTP client shared by a backend's calls inside `async with backend:`.

Opening a client costs ~20 ms of CPU (its TLS context loads the system's CA certificates) and, against a
remote API server, a new TCP and TLS handshake. A task that polls status every second or applies many
objects pays that once per block instead of once per call. Outside a block, or on another event loop
(a client belongs to the loop that opened it), each call opens and closes its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

C = TypeVar("C")


class SharedClient(Generic[C]):
    def __init__(self, open_client: Callable[[], Awaitable[C]], close_client: Callable[[C], Awaitable[None]]):
        self._open = open_client
        self._close = close_client
        self._client: C | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._depth = 0

    async def __aenter__(self) -> None:
        if self._depth == 0:
            self._client, self._loop = await self._open(), asyncio.get_running_loop()
        self._depth += 1

    async def __aexit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._client is not None:
            client, self._client, self._loop = self._client, None, None
            await self._close(client)

    @asynccontextmanager
    async def use(self) -> AsyncIterator[C]:
        """The shared client when one is open on this loop, else a client of this call's own."""
        if self._client is not None and self._loop is asyncio.get_running_loop():
            yield self._client
            return
        client = await self._open()
        try:
            yield client
        finally:
            await self._close(client)
