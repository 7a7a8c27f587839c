"""Virtual time that waits for worker threads.

Trio's ``MockClock`` autojump sees only Trio tasks: while a task waits on ``trio.to_thread.run_sync``
(a spool fsync, a store query) the run loop looks idle, and on a loaded machine the thread can take
longer than any ``autojump_threshold``, so the clock jumps to the next deadline (a 600 s tarpit, a
``fail_after``) while the work is still in flight. The clock here jumps only when the run loop is idle
*and* no worker-thread call is outstanding, which is what "nothing can happen before the next deadline"
means; how fast the machine is no longer matters.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

# How long the run loop must be idle before the clock jumps. While a thread works the loop waits this
# long at a time (a finished thread wakes it at once), so it only has to be short, not long enough.
_IDLE = 0.002


@pytest.fixture
def thread_clock(mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """pytest-trio's ``mock_clock`` (the run's clock), autojumping only while no thread is at work.

    The relay calls ``trio.to_thread.run_sync`` through the module attribute, so counting it here sees
    every worker thread it starts. The run loop calls the clock's ``_autojump`` once it has been idle
    for the threshold (MockClock is final and that hook has no public form yet: trio issue 1587), so
    the count gates it there. A finished thread's result reaches the loop as an I/O wake-up, which
    counts as activity: the jump never races the thread's caller.
    """
    in_flight = 0
    run_sync = trio.to_thread.run_sync
    autojump = mock_clock._autojump

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight
        in_flight += 1
        try:
            return await run_sync(*args, **kwargs)
        finally:
            in_flight -= 1

    def gated() -> None:
        if not in_flight:
            autojump()

    monkeypatch.setattr(trio.to_thread, "run_sync", counted)
    monkeypatch.setattr(mock_clock, "_autojump", gated)
    mock_clock.autojump_threshold = _IDLE
    return mock_clock
