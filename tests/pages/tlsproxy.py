"""A TLS-terminating TCP proxy on loopback: the relay's public https origin in tests.

The relay's HTTP listener is plain http; the PDS must fetch ``https://client.probe.internal:<port>/oauth/
client-metadata.json`` and browsers must reach the callback over https. The listener is bound first (so
``public_url`` can name its port before the relay starts); ``upstream`` is set once the relay is up.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path


class TlsProxy:
    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.upstream: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def start(self, upstream: tuple[str, int]) -> TlsProxy:
        self.upstream = upstream
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        assert self.upstream is not None
        try:
            client = self.ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        try:
            backend = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        done = threading.Event()

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                done.set()

        threading.Thread(target=pipe, args=(backend, client), daemon=True).start()
        pipe(client, backend)
        done.wait(timeout=30)
        for s in (client, backend):
            try:
                s.close()
            except OSError:
                pass
