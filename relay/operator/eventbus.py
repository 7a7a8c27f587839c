"""The operator event bus: publish/subscribe over bounded Trio memory channels (DESIGN §2-3).

Mail never waits for a watcher. ``publish`` is synchronous and never blocks: it puts the event into
each subscriber's bounded channel with ``send_nowait``; a subscriber whose channel is full is behind
by ``buffer`` events, so it is DROPPED at once (both ends of its channel closed, ``dropped``
counted) rather than slowing the acceptor or the scheduler. A dropped client reconnects and starts
again from a fresh snapshot, which is cheaper and more honest than a stream with a hole in it.

Publish only from the Trio thread (the acceptor, the scheduler, the periodic publisher and the
command handlers all run there); a worker thread must hand events over with ``trio.from_thread``.

    bus = EventBus(buffer=1000)
    with bus.subscribe() as sub:
        async for event in sub:
            ...
    if sub.dropped: ...   # it fell behind

Hook points for other modules: anything that has an ``Event`` to report calls ``bus.publish(event)``
(e.g. complaints from the inbound listener: ``ComplaintReceived``; warming updates: ``Warming``).
"""

from __future__ import annotations

import logging
from types import TracebackType

import trio

from relay.events import Event

log = logging.getLogger("relay.events")


class Subscription:
    """One subscriber's bounded stream of events; an async iterator that ends when the subscription
    is closed, dropped for falling behind (``dropped`` is then True), or the bus closes."""

    def __init__(self, bus: EventBus, buffer: int) -> None:
        self._bus = bus
        self._send, self._receive = trio.open_memory_channel[Event](buffer)
        self.dropped = False
        self.received = 0

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
        self._bus._left(self)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            event = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        self.received += 1
        return event

    def close(self) -> None:
        """Unsubscribe (idempotent). A task blocked in ``__anext__`` wakes up and the iteration ends."""
        self._bus._subs.pop(id(self), None)
        self._bus._internal.discard(id(self))
        self._send.close()
        self._receive.close()

    def _offer(self, event: Event) -> bool:
        """False when this subscriber can take no more (full, or its reader went away)."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped = True
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True


class EventBus:
    def __init__(self, buffer: int = 1000) -> None:
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self.buffer = buffer
        self._subs: dict[int, Subscription] = {}
        self._held: set[int] = set()  # subscriptions whose ``with`` block has not exited yet
        self._internal: set[int] = set()  # in-process consumers (webhooks), not counted as watchers
        self._left_event = trio.Event()
        self._closed = False
        self.dropped = 0  # subscribers dropped for falling behind, since start
        self.published = 0  # events published, since start

    @property
    def subscribers(self) -> int:
        """Watchers (/admin/ws clients); ``internal`` subscriptions are not counted."""
        return len(self._subs) - len(self._internal)

    def subscribe(self, *, internal: bool = False) -> Subscription:
        """A new subscription (use it as a context manager so it is always closed).

        ``internal``: an always-on in-process consumer (relay.members.webhooks) that must not count as a
        watcher, so the periodic publisher still idles and the subscriber gauge reads consoles only.
        """
        sub = Subscription(self, self.buffer)
        if self._closed:
            sub.close()  # a bus that is shutting down hands out streams that end at once
        else:
            self._subs[id(sub)] = sub
            self._held.add(id(sub))
            if internal:
                self._internal.add(id(sub))
        return sub

    def _left(self, sub: Subscription) -> None:
        self._held.discard(id(sub))
        self._left_event.set()

    def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber now; never blocks, never raises for a subscriber."""
        self.published += 1
        for sub in list(self._subs.values()):
            if not sub._offer(event):
                if sub.dropped:
                    self.dropped += 1
                    log.warning("event subscriber dropped: %d events behind (dropped so far: %d)",
                                self.buffer, self.dropped)
                sub.close()

    def close(self) -> None:
        """Shutdown: end every subscription (their readers see the stream end); later publishes go nowhere."""
        self._closed = True
        for sub in list(self._subs.values()):
            sub.close()

    async def aclose(self, grace: float = 2.0) -> None:
        """``close``, then wait up to ``grace`` seconds for every subscriber to leave its ``with`` block
        (a websocket handler sends its close frame before it does)."""
        self.close()
        with trio.move_on_after(grace):
            while self._held:
                self._left_event = trio.Event()
                await self._left_event.wait()


__all__ = ["EventBus", "Subscription"]
