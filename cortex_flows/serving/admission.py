"""Admission control after Cortex's proxy breaker: `max_concurrency` slots and a FIFO queue of
`max_queue_length`; anything beyond is shed at once, so overload shows up as fast 503s the autoscaler
and clients can react to, not as unbounded latency."""

from __future__ import annotations

import asyncio
from collections import deque


class Overloaded(Exception):
    """Every slot is busy and the queue is full."""


class Admission:
    """A FIFO semaphore with a bounded wait queue (single event loop, no locks needed)."""

    def __init__(self, max_concurrency: int, max_queue_length: int) -> None:
        if max_concurrency < 1 or max_queue_length < 0:
            raise ValueError("max_concurrency must be >= 1 and max_queue_length >= 0")
        self.max_concurrency = max_concurrency
        self.max_queue_length = max_queue_length
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def in_flight(self) -> int:
        """Requests running plus requests queued: Cortex's autoscaling input."""
        return self.active + len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in line if needed; raise `Overloaded` if the line is full."""
        if self.active < self.max_concurrency and not self._waiters:
            self.active += 1
            return
        if len(self._waiters) >= self.max_queue_length:
            raise Overloaded
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed to us just before the cancellation
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the slot to the oldest live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # `active` is unchanged: the slot moves to the waiter
                return
        self.active -= 1
