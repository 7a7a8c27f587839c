"""A loopback HTTP(S) server in a thread, for tests whose peer is "some web server" (a PDS, a PLC
directory, an MTA-STS policy host, a webhook receiver): stdlib ``http.server`` on a port the kernel
picks, stopped when the block ends.

    class Pages(QuietHandler):
        def do_GET(self) -> None:
            self.send_body(b'{"id": "x"}', "application/json")

    with serving(Pages) as port:  # http://127.0.0.1:<port>; serving(Pages, tls=ctx) for https
        ...
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps pytest's output clean (no access log on stderr)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_body(self, body: bytes, kind: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler], *, tls: ssl.SSLContext | None = None) -> Iterator[int]:
    """``handler`` on 127.0.0.1 (port 0: no race for a free port), a thread a request, behind ``tls``
    (a server context) when given; yields the port and shuts the server and its socket down at the end."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
