"""SharedClient: one client for the calls inside `async with`, one per call outside it or on another loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from cortex_flows.backends.pooling import SharedClient


class Clients:
    def __init__(self) -> None:
        self.opened: list[int] = []
        self.closed: list[int] = []

    async def open(self) -> int:
        self.opened.append(len(self.opened))
        return self.opened[-1]

    async def close(self, client: int) -> None:
        self.closed.append(client)


async def _use(shared: SharedClient[int]) -> int:
    async with shared.use() as client:
        return client


def test_calls_inside_the_block_share_one_client_closed_at_its_end() -> None:
    clients = Clients()
    shared = SharedClient(clients.open, clients.close)

    async def main() -> list[int]:
        async with shared:
            used = [await _use(shared) for _ in range(3)]
            used += await asyncio.gather(*(_use(shared) for _ in range(3)))
            assert clients.closed == []
        return used

    assert asyncio.run(main()) == [0] * 6
    assert clients.opened == [0] and clients.closed == [0]


def test_outside_a_block_each_call_opens_and_closes_its_own() -> None:
    clients = Clients()
    shared = SharedClient(clients.open, clients.close)

    async def main() -> list[int]:
        return [await _use(shared) for _ in range(3)]

    assert asyncio.run(main()) == [0, 1, 2]
    assert clients.closed == [0, 1, 2]


def test_nested_blocks_keep_the_client_until_the_outer_one_ends() -> None:
    clients = Clients()
    shared = SharedClient(clients.open, clients.close)

    async def main() -> None:
        async with shared:
            async with shared:
                assert await _use(shared) == 0
            assert clients.closed == []
            assert await _use(shared) == 0
        assert clients.closed == [0]
        assert await _use(shared) == 1  # after the block: a call's own again

    asyncio.run(main())
    assert clients.closed == [0, 1]


def test_a_call_from_another_event_loop_gets_its_own_client() -> None:
    """A client belongs to the loop that opened it (e.g. a lease renewed from a thread's loop)."""
    clients = Clients()
    shared = SharedClient(clients.open, clients.close)
    seen: list[int] = []

    async def main() -> None:
        async with shared:
            thread = threading.Thread(target=lambda: seen.append(asyncio.run(_use(shared))))
            thread.start()
            thread.join()
            seen.append(await _use(shared))

    asyncio.run(main())
    assert seen == [1, 0]
    assert sorted(clients.closed) == [0, 1]


def test_a_failing_call_inside_the_block_keeps_the_client_for_the_next() -> None:
    clients = Clients()
    shared = SharedClient(clients.open, clients.close)

    async def fail() -> None:
        async with shared.use():
            raise RuntimeError("answered 500")

    async def main() -> int:
        async with shared:
            with contextlib.suppress(RuntimeError):
                await fail()
            return await _use(shared)

    assert asyncio.run(main()) == 0
    assert clients.opened == [0]
