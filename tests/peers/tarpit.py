"""A tarpit MX for tests: speaks SMTP up to the final dot, then never answers (RFC 5321 §4.5.3.2.6).

Real loopback sockets in a thread, so the relay process (or a Trio client) meets the same thing a
hostile or broken MX would give it: the message is taken and the reply never comes, for as long as
the client waits.

    with Tarpit("127.0.0.2", port) as pit:   # port 0: any free port (pit.port)
        ...
        pit.hanging      # connections currently waiting after the final dot
        pit.messages     # final dots received
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class Tarpit:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(256)
        self.port = self._sock.getsockname()[1]
        self.hanging = 0
        self.messages = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Tarpit:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        with self._lock:
            for conn in self._conns:
                conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""

        def line() -> bytes | None:
            nonlocal buf
            while b"\r\n" not in buf:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return None
                if not chunk:
                    return None
                buf += chunk
            out, _, buf = buf.partition(b"\r\n")
            return out

        try:
            conn.sendall(b"220 tarpit.test ESMTP\r\n")
            while (cmd := line()) is not None:
                verb = cmd[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(b"250-tarpit.test\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    while (text := line()) is not None and text != b".":
                        pass
                    with self._lock:
                        self.messages += 1
                        self.hanging += 1
                    try:
                        while conn.recv(65536):  # never answer; wait for the client to give up
                            pass
                    finally:
                        with self._lock:
                            self.hanging -= 1
                    return
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            conn.close()
