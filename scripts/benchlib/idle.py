"""Hold N idle SMTP connections (each has read its 220 greeting) and measure the server's memory."""

from __future__ import annotations

import contextlib
import resource
import selectors
import socket
import time
from collections.abc import Iterator


def raise_nofile(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def hold(host: str, port: int, count: int, timeout: float = 60.0) -> Iterator[tuple[int, str]]:
    """Open ``count`` connections, wait (bounded) for every greeting; yields (greeted, first error)."""
    raise_nofile(count + 256)
    socks: list[socket.socket] = []
    first_error = ""
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytes] = {}
    greeted = 0
    try:
        deadline = time.monotonic() + timeout
        for _ in range(count):
            if time.monotonic() > deadline:
                first_error = first_error or "timed out while connecting"
                break
            try:
                s = socket.create_connection((host, port), timeout=10)
            except OSError as exc:
                first_error = first_error or f"connect: {exc}"
                break
            s.setblocking(False)
            socks.append(s)
            pending[s] = b""
            sel.register(s, selectors.EVENT_READ)
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(512)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    data = b""
                    first_error = first_error or f"recv: {exc}"
                buf = pending[conn] + data
                if not data or b"\n" in buf:
                    sel.unregister(conn)
                    del pending[conn]
                    if buf.startswith(b"220"):
                        greeted += 1
                    else:
                        first_error = first_error or f"greeting: {buf[:100]!r}"
                else:
                    pending[conn] = buf
        if pending:
            first_error = first_error or f"{len(pending)} connections got no greeting within {timeout:.0f}s"
        yield greeted, first_error
    finally:
        sel.close()
        for s in socks:
            s.close()
