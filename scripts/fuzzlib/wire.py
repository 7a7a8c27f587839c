"""Raw client connections for the battery: send bytes, read what comes back, never hang."""

from __future__ import annotations

import ssl

import trio

READ = 65536
# A Python traceback that reached the client: a bug even when the relay stays up (bad input gets a
# clear reply, never internals).
TRACEBACK_MARKERS = (b"Traceback (most recent call last)", b'File "/', b"Exception Group Traceback")
# The relay's own budget replies: with the per-address budgets lifted (relay.py) they should be rare,
# so that the battery measures robustness, not our throttles.
THROTTLE_MARKERS = {
    b"too many connections": "connection cap (421 4.7.0)",
    b"too many errors": "error limit (421 4.7.0)",
    b"too many failed authentications": "auth throttle (454 4.7.0)",
    b"too many messages": "inbound transactions (421/450)",
    b"AUTH_THROTTLED": "auth throttle (HTTP 429)",
    b"AUTH_BUSY": "bcrypt queue full (454/503)",
}


class Conn:
    """A TCP (optionally TLS-upgraded) connection with bounded reads."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream: trio.abc.Stream = stream
        self.received = 0
        self.closed_by_peer = False
        self.traceback = b""  # the first Python traceback text that reached this client, if any
        self.throttled: set[str] = set()  # budget replies seen (THROTTLE_MARKERS' values)
        self._tail = b""  # the end of the previous chunk: a marker split across two reads is still seen

    def _scan(self, chunk: bytes | bytearray) -> None:
        window = self._tail + chunk
        if not self.traceback and any(marker in window for marker in TRACEBACK_MARKERS):
            self.traceback = window[:300]
        lowered = window.lower()
        self.throttled.update(name for marker, name in THROTTLE_MARKERS.items() if marker.lower() in lowered)
        self._tail = window[-64:]

    @classmethod
    async def open(cls, addr: tuple[str, int]) -> Conn:
        return cls(await trio.open_tcp_stream(*addr))

    async def send(self, data: bytes) -> bool:
        """False when the peer has gone (a refusal, not a failure)."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.closed_by_peer = True
            return False
        return True

    async def read(self, first: float = 5.0, idle: float = 0.03, limit: int = 1 << 20) -> bytes:
        """Whatever arrives: wait up to ``first`` for something, then until ``idle`` passes quietly."""
        out = bytearray()
        wait = first
        while len(out) < limit and not self.closed_by_peer:
            with trio.move_on_after(wait):
                try:
                    chunk = await self.stream.receive_some(READ)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                    chunk = b""
                if not chunk:
                    self.closed_by_peer = True
                    break
                out += chunk
                self.received += len(chunk)
                self._scan(chunk)
                wait = idle
                continue
            break
        return bytes(out)

    async def read_reply(self, first: float = 5.0) -> bytes:
        """One complete SMTP reply (its last line has a space after the code), or what came before EOF."""
        out = bytearray()
        with trio.move_on_after(first):
            while not self.closed_by_peer:
                lines = bytes(out).split(b"\r\n")
                if len(lines) > 1 and any(len(ln) >= 4 and ln[3:4] == b" " for ln in lines[:-1]):
                    break
                try:
                    chunk = await self.stream.receive_some(READ)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                    chunk = b""
                if not chunk:
                    self.closed_by_peer = True
                    break
                out += chunk
                self._scan(chunk)
        return bytes(out)

    async def starttls(self, ctx: ssl.SSLContext, server_hostname: str = "localhost") -> bool:
        tls = trio.SSLStream(self.stream, ctx, server_hostname=server_hostname)
        try:
            with trio.fail_after(10):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, OSError):
            return False
        self.stream = tls
        return True

    async def aclose(self) -> None:
        with trio.move_on_after(2):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError):
                pass


def client_tls() -> ssl.SSLContext:
    """The dev relay's certificate is self-signed: the battery checks robustness, not identity."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


__all__ = ["Conn", "client_tls"]
