"""Free loopback ports and "is it up yet" for the test peers (tests bind free ports, never fixed ones).

A port probed free can be taken again before the peer binds it (any outgoing connection may get it as
its local port): every peer that uses ``free_port`` retries its start with a fresh one.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port(*, udp: bool = False) -> int:
    """A TCP port free on 127.0.0.1 right now; ``udp``: free for UDP as well (a DNS server listens on both)."""
    for _ in range(50):
        kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on 127.0.0.1")


def wait_for_banner(port: int, timeout: float, *, alive: Callable[[], bool] = lambda: True) -> None:
    """Until an SMTP server on 127.0.0.1:``port`` greets with 220; TimeoutError when it has not within
    ``timeout`` s or as soon as ``alive()`` says the server's process is gone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            pass
        if not alive():
            raise TimeoutError(f"the SMTP server for 127.0.0.1:{port} exited before it greeted")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SMTP banner on 127.0.0.1:{port} within {timeout} s")
        time.sleep(0.05)
