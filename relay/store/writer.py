"""Batched status writer: the accept path and the scheduler never wait on a
per-message store transaction (DESIGN §4).

Producers queue write ops (MessageRow / StatusUpdate / NewAttempt) with the
synchronous ``submit_nowait``; one task drains the channel and applies up to
``max_batch`` ops in ONE store transaction, waiting at most ``max_delay`` after
the first op for more to arrive.

Why nothing is lost:
- The spool, not the store, is the source of truth. Message rows and statuses
  are derived from it (relay.store.mirror): an op still queued when the process
  dies is replayed from the spool at the next start (rows re-inserted with
  ``ON CONFLICT DO NOTHING``, statuses re-applied from the spool's transition
  records past the store's mark), so the store converges.
- While the process runs, ops are never dropped: a batch is retried until the
  store is back, and ``submit_nowait`` never refuses an op. It is called right
  after the spool's fsync, when the client is owed its 250: failing there would
  lose the reply, and blocking there would make clients time out and resend an
  already-durable message. So the queue has a soft limit instead of a hard one:
  past ``backlog_limit`` it logs and reports ``overloaded``, which the accept
  path checks BEFORE spooling the next message to answer 451 4.4.2.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

from relay.store.aio import AsyncStore
from relay.store.base import InvalidRow, StoreUnavailable
from relay.store.rows import WriteOp

log = logging.getLogger(__name__)

_RETRY_MIN, _RETRY_MAX = 0.1, 5.0  # backoff while the store is unavailable (seconds)
_WARN_EVERY = 10.0  # at most one "backlog" warning per this many seconds


class _Waiter:
    """A marker in the channel: set once every op queued before it is committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = trio.Event()


_Item = list[WriteOp] | _Waiter


@dataclass(slots=True)
class WriterStats:
    batches: int = 0  # committed transactions
    ops: int = 0  # ops committed
    retries: int = 0  # transactions retried because the store was unavailable
    quarantined: int = 0  # ops the store could not take, skipped and logged (each one a bug; the spool has it)
    peak_backlog: int = 0  # most ops ever waiting


class StatusWriter:
    def __init__(
        self,
        store: AsyncStore,
        *,
        max_batch: int = 500,
        max_delay: float = 0.05,
        backlog_limit: int = 10_000,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._store = store
        self._max_batch = max_batch
        self._max_delay = max_delay
        self._backlog_limit = backlog_limit
        # Unbounded on purpose (see the module docstring); the soft limit is backlog_limit.
        self._send, self._recv = trio.open_memory_channel[_Item](math.inf)
        self._backlog = 0
        self._last_warning = -math.inf
        self.stats = WriterStats()
        self.store_error: str | None = None  # while a batch is being retried: why the store refused it

    @property
    def backlog(self) -> int:
        """Ops queued and not yet taken into a batch."""
        return self._backlog

    @property
    def overloaded(self) -> bool:
        """True while the store lags far behind: refuse new mail (451 4.4.2) until it catches up."""
        return self._backlog >= self._backlog_limit

    def submit_nowait(self, ops: WriteOp | Iterable[WriteOp]) -> None:
        """Queue one op or several (one message's recipient rows) without waiting; never refuses.

        Raises trio.ClosedResourceError after ``aclose``.
        """
        items = [ops] if isinstance(ops, WriteOp) else list(ops)
        if not items:
            return
        self._send.send_nowait(items)
        self._backlog += len(items)
        self.stats.peak_backlog = max(self.stats.peak_backlog, self._backlog)
        if self.overloaded:
            self._warn_backlog()

    async def submit(self, ops: WriteOp | Iterable[WriteOp]) -> None:
        """Queue and wait until committed (callers that need to read their write back)."""
        self.submit_nowait(ops)
        await self.flush()

    async def flush(self) -> None:
        """Wait until every op queued before this call is committed (tests, shutdown, read-after-write)."""
        waiter = _Waiter()
        self._send.send_nowait(waiter)
        await waiter.done.wait()

    async def aclose(self) -> None:
        """Stop accepting ops; ``run`` commits what is queued, then returns."""
        await self._send.aclose()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                first = await self._recv.receive()
            except trio.EndOfChannel:
                return
            ops: list[WriteOp] = []
            waiters: list[_Waiter] = []
            self._add(first, ops, waiters)
            still_open = await self._collect(ops, waiters)
            await self._commit(ops)
            for waiter in waiters:
                waiter.done.set()
            if not still_open:
                return

    async def _collect(self, ops: list[WriteOp], waiters: list[_Waiter]) -> bool:
        """Add items until the batch is full, max_delay has passed, or someone waits on it.

        Returns False once the channel is closed and drained.
        """
        with trio.move_on_after(self._max_delay):
            while len(ops) < self._max_batch and not waiters:
                try:
                    item = await self._receive()
                except trio.EndOfChannel:
                    return False
                self._add(item, ops, waiters)
        return True

    async def _receive(self) -> _Item:
        # receive_nowait first: draining a long queue needs no trip through the scheduler.
        try:
            return self._recv.receive_nowait()
        except trio.WouldBlock:
            return await self._recv.receive()  # cancel-safe: a cancelled receive takes nothing

    def _add(self, item: _Item, ops: list[WriteOp], waiters: list[_Waiter]) -> None:
        if isinstance(item, _Waiter):
            waiters.append(item)
        else:
            ops.extend(item)
            self._backlog -= len(item)

    async def _commit(self, ops: Sequence[WriteOp]) -> None:
        """Commit ops; one that cannot be written is quarantined: skipped, logged, counted.

        Never raises (but Cancelled): an exception here would end the writer's task and with it the
        relay's root nursery, and every restart would fail the same way on the same spooled message.
        The row is derived data (the spool holds the message, and delivery goes on), so skipping it
        loses a line of status history at worst.
        """
        if not ops:
            return
        try:
            await self._apply(ops)
        except Exception as exc:
            # One bad op must not sink its neighbours: retry them one per transaction.
            log.warning("store refused a batch of %d ops (%s); applying them one by one", len(ops), exc)
            for op in ops:
                try:
                    await self._apply([op])
                except InvalidRow as bad:
                    self._quarantine(op, bad, traceback=False)
                except Exception as bug:
                    self._quarantine(op, bug, traceback=True)

    def _quarantine(self, op: WriteOp, exc: Exception, *, traceback: bool) -> None:
        self.stats.quarantined += 1
        log.error("status writer: quarantined a write op the store cannot take (%s: %s): %a",
                  type(exc).__name__, exc, op, exc_info=exc if traceback else None)

    async def _apply(self, ops: Sequence[WriteOp]) -> None:
        """One transaction, retried with backoff while the store is unavailable."""
        delay = _RETRY_MIN
        while True:
            try:
                await self._store.apply_batch(ops)
            except StoreUnavailable as exc:
                self.store_error = str(exc)
                self.stats.retries += 1
                log.warning("store unavailable, retrying %d ops in %.1fs: %s", len(ops), delay, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            self.store_error = None
            self.stats.batches += 1
            self.stats.ops += len(ops)
            return

    def _warn_backlog(self) -> None:
        now = trio.current_time()
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            log.warning("status writer backlog %d ops: the store is not keeping up", self._backlog)
