"""Firehose-driven labels: react within seconds when an enrolled member writes or deletes its attestation.

    firehose = Firehose(url, store=store, on_member=labeler.request_check)
    await nursery.start(firehose.run)

``labeler.firehose_url`` names the stream, one of:

- ``com.atproto.sync.subscribeRepos`` of a relay or PDS (``wss://host/xrpc/com.atproto.sync.subscribeRepos``):
  DAG-CBOR frames, decoded with the atproto SDK's frame model; ``#commit`` messages carry the repo DID
  and the ops' paths (``collection/rkey``);
- a Jetstream endpoint (``wss://host/subscribe``): JSON events, asked for the attestation collection only.

A commit that touches ``email.atmos.attestation`` in the repo of an enrolled member asks the labeler to
check that member now (``on_member``); the labeler reads the record from the member's PDS itself, so
nothing in the frame is trusted beyond "look again". The daily re-check stays as the safety net.

The stream is a stranger's: frames are capped (``labeler.firehose_max_frame`` bytes, bigger ones end the
connection), decoded in a worker thread (one at a time: a flood slows the stream, never the event loop),
and a cheap byte search skips frames that cannot concern the collection. The cursor (the last ``seq``, or
Jetstream ``time_us``) is saved every few seconds and sent on reconnect, so no commit is missed across a
restart; reconnects back off exponentially (1 s doubling to 60 s, with jitter). The connection goes
through the one outbound address policy (relay.net.egress): the host is resolved once, private, loopback
and link-local addresses are refused (loopback only with ``[testing] allow_loopback_peers``), ``ws://``
only where egress allows ``http://``, and the TCP stream goes to exactly the checked address. Enrolled DIDs are
re-read from the store every minute (a set bounded by the membership), so a stranger's commits cost no
store reads.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import trio
import trio_websocket

from relay.labeler.conditions import ATTESTATION_COLLECTION
from relay.net.egress import Egress, EgressRefused

__all__ = ["Firehose", "FrameError", "decode_jetstream", "decode_repos_frame"]

log = logging.getLogger("relay.labeler.firehose")

_NEEDLE = ATTESTATION_COLLECTION.encode()
_BACKOFF_START, _BACKOFF_CAP = 1.0, 60.0
_SAVE_EVERY = 5.0
_MEMBERS_EVERY = 60.0


class FrameError(ValueError):
    """A frame that does not decode: the stream is broken or hostile; the connection is dropped."""


@dataclass(frozen=True, slots=True)
class Seen:
    """What one frame said: its cursor (None when it has none) and the repos whose attestation changed."""

    cursor: int | None
    dids: tuple[str, ...] = ()


def decode_repos_frame(data: bytes) -> Seen:
    """One ``subscribeRepos`` frame (DAG-CBOR header + body), with the SDK's models. Worker thread."""
    from atproto_client.subscriptions import parse_com_atproto_sync_subscribe_repos_message
    from atproto_subscription.frames import ErrorFrame, Frame

    try:
        frame = Frame.from_bytes(data)
    except Exception as exc:  # the SDK raises its own and libipld's errors for bad CBOR
        raise FrameError(f"undecodable frame ({type(exc).__name__}: {str(exc)[:100]})") from None
    if isinstance(frame, ErrorFrame):
        raise FrameError(f"the stream sent an error: {frame.body.error} {frame.body.message or ''}")
    body = frame.body if isinstance(frame.body, dict) else {}
    seq = body.get("seq")
    cursor = seq if isinstance(seq, int) else None
    if frame.type != "#commit" or _NEEDLE not in data:
        return Seen(cursor)  # the common case: no pydantic model built at all
    try:
        commit = parse_com_atproto_sync_subscribe_repos_message(frame)
    except Exception as exc:
        raise FrameError(f"bad #commit ({type(exc).__name__})") from None
    paths = [op.path for op in getattr(commit, "ops", None) or []]
    if any(p.split("/", 1)[0] == ATTESTATION_COLLECTION for p in paths):
        return Seen(cursor, (str(commit.repo),))
    return Seen(cursor)


def decode_jetstream(data: str | bytes) -> Seen:
    """One Jetstream event (JSON). Worker thread."""
    try:
        event = json.loads(data)
    except ValueError:
        raise FrameError("not JSON") from None
    if not isinstance(event, dict):
        raise FrameError("not a JSON object")
    time_us = event.get("time_us")
    cursor = time_us if isinstance(time_us, int) else None
    commit = event.get("commit")
    did = event.get("did")
    if event.get("kind") == "commit" and isinstance(commit, dict) and isinstance(did, str) \
            and commit.get("collection") == ATTESTATION_COLLECTION:
        return Seen(cursor, (did,))
    return Seen(cursor)


class CursorStore(Protocol):
    async def get_firehose_cursor(self, url: str) -> int | None: ...
    async def set_firehose_cursor(self, url: str, cursor: int, now: float) -> None: ...
    async def list_members(self) -> list[Any]: ...


@dataclass(slots=True)
class Firehose:
    url: str
    store: CursorStore
    on_member: Callable[[str], None]
    max_frame: int = 2 * 1024 * 1024
    egress: Egress = field(default_factory=Egress)  # the strict policy unless the relay passes its own
    wall: Callable[[], float] = time.time
    # observable state, for tests and the console
    frames: int = 0
    triggered: int = 0
    connects: int = 0
    cursor: int | None = None
    _members: frozenset[str] = frozenset()
    _members_at: float = -1e18
    _saved: int | None = None
    _limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))

    @property
    def jetstream(self) -> bool:
        return not urlsplit(self.url).path.endswith("com.atproto.sync.subscribeRepos")

    def _connect_url(self) -> str:
        parts = urlsplit(self.url)
        query = [parts.query] if parts.query else []
        if self.jetstream:
            query.append(urlencode({"wantedCollections": ATTESTATION_COLLECTION}))
        if self.cursor is not None:
            query.append(urlencode({"cursor": self.cursor}))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(query), ""))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.cursor = await self.store.get_firehose_cursor(self.url)
        task_status.started()
        backoff = _BACKOFF_START
        try:
            while True:
                try:
                    await self._session()
                    backoff = _BACKOFF_START  # a session that ended cleanly resets the backoff
                except (OSError, EgressRefused, trio_websocket.HandshakeError, trio_websocket.ConnectionClosed,
                        trio_websocket.ConnectionTimeout, trio_websocket.DisconnectionTimeout, FrameError,
                        trio.BrokenResourceError, trio.TooSlowError) as exc:
                    log.warning("firehose %s: %s; reconnecting in %.0f s", self.url, exc, backoff)
                except Exception:
                    log.exception("firehose %s failed; reconnecting in %.0f s", self.url, backoff)
                await self._save()
                await trio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, _BACKOFF_CAP)
        finally:
            with trio.CancelScope(shield=True):
                await self._save()

    async def _session(self) -> None:
        url = self._connect_url()
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host, port = parts.hostname or "", parts.port or (443 if secure else 80)
        resource = parts.path + (f"?{parts.query}" if parts.query else "")
        # Our own TCP (and TLS) stream under trio-websocket: it is closed here whatever happens (the
        # library leaks the socket when a message exceeds max_message_size), and it goes to the address
        # relay.net.egress checked (wss is judged as https, ws as http).
        try:
            self.egress.check_url(urlunsplit(("https" if secure else "http", parts.netloc, parts.path, "", "")))
        except EgressRefused:
            raise EgressRefused(f"firehose URL {self.url!r} must be wss:// (ws:// only in --dev or to a "
                                "loopback test peer)") from None
        with trio.fail_after(30):
            tcp = await self._connect(host, port)
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
        try:
            if secure:
                stream = trio.SSLStream(tcp, ssl.create_default_context(), server_hostname=host,
                                        https_compatible=True)
            try:
                async with trio.open_nursery() as nursery:
                    with trio.fail_after(30):
                        # No queue between trio-websocket's reader and us (message_queue_size=0): when a
                        # frame is over the cap, the library closes its receive channel and drops every
                        # queued message, so a commit that arrived whole just before a hostile frame would
                        # be lost (only a server that replays from our cursor would send it again). With a
                        # hand-off, the reader reads the next frame only once we hold the previous one.
                        ws = await trio_websocket.wrap_client_stream(nursery, stream, host, resource,
                                                                     message_queue_size=0,
                                                                     max_message_size=self.max_frame)
                    try:
                        await self._receive(ws, url)
                    finally:
                        with trio.move_on_after(5) as closing:
                            closing.shield = True
                            await ws.aclose()
                        nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                # The connection's own nursery wraps what ended it; one cause is reported as itself.
                if len(group.exceptions) == 1 and isinstance(group.exceptions[0], Exception):
                    raise group.exceptions[0] from None
                raise
        finally:
            await trio.aclose_forcefully(stream)

    async def _connect(self, host: str, port: int) -> trio.SocketStream:
        try:
            addresses = await self.egress.resolve(host, port)
        except EgressRefused as exc:
            log.warning("outbound connection refused: %s", exc)
            raise
        last: OSError | None = None
        for address in addresses:
            try:
                return await trio.open_tcp_stream(address, port)
            except OSError as exc:
                last = exc
        assert last is not None
        raise last

    async def _receive(self, ws: trio_websocket.WebSocketConnection, url: str) -> None:
        self.connects += 1
        log.info("firehose connected: %s", url)
        last_save = trio.current_time()
        while True:
            message = await ws.get_message()
            seen = await self._decode(message)
            self.frames += 1
            if seen.cursor is not None:
                self.cursor = seen.cursor
            if seen.dids:
                await self._trigger(seen.dids)
            if trio.current_time() - last_save >= _SAVE_EVERY:
                await self._save()
                last_save = trio.current_time()

    async def _decode(self, message: str | bytes) -> Seen:
        if self.jetstream:
            return await trio.to_thread.run_sync(decode_jetstream, message, limiter=self._limiter)
        if isinstance(message, str):
            raise FrameError("a text message on a CBOR stream")
        return await trio.to_thread.run_sync(decode_repos_frame, message, limiter=self._limiter)

    async def _trigger(self, dids: tuple[str, ...]) -> None:
        now = trio.current_time()
        stale = now - self._members_at >= _MEMBERS_EVERY
        # A DID we do not know may have enrolled since the last read: read again, at most once a second.
        unknown = any(d not in self._members for d in dids) and now - self._members_at >= 1.0
        if stale or unknown:
            self._members = frozenset(m.did for m in await self.store.list_members())
            self._members_at = now
        for did in dids:
            if did in self._members:
                self.triggered += 1
                log.info("firehose: attestation of %s changed; checking now", did)
                self.on_member(did)

    async def _save(self) -> None:
        if self.cursor is not None and self.cursor != self._saved:
            try:
                await self.store.set_firehose_cursor(self.url, self.cursor, self.wall())
                self._saved = self.cursor
            except Exception:
                log.exception("firehose: could not save the cursor")
