"""A hostile HTTP server's answers: the stranger's server (a PDS, a PLC directory, a handle's host) that
the relay's bounded fetches are proven against (issue 13). Each mode is one way to make a careless
reader hold a whole body in memory or wait on it forever:

  forever      no Content-Length: the body ends when the connection does (never), 64 KiB a write
  drip         no Content-Length, one byte every ``drip_every`` s: under any byte cap, only a deadline ends it
  huge-length  announces a 10 GiB body and sends its first bytes
  gzip-bomb    a few KiB on the wire, 10 MiB decoded

    class Evil(HostileHandler):
        def do_GET(self) -> None:
            self.send_hostile(b'{"value": "', b'"}')

    Evil.mode = "drip"
    with serving(Evil) as port: ...   # tests/peers/httpd.py
"""

from __future__ import annotations

import gzip
import time

from tests.peers.httpd import QuietHandler

MODES = ("forever", "drip", "huge-length", "gzip-bomb")


class HostileHandler(QuietHandler):
    mode = "forever"  # one of MODES; a test sets it on its subclass before each fetch
    drip_every = 0.2  # seconds between the bytes of "drip"

    def send_hostile(self, opening: bytes, closing: bytes) -> None:
        """A 200 JSON answer in ``mode``: ``opening`` + an endless (or huge) string + ``closing``."""
        mode = type(self).mode
        assert mode in MODES, mode
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if mode == "gzip-bomb":
            bomb = gzip.compress(opening + b"a" * (10 << 20) + closing)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)
            return
        if mode == "huge-length":
            self.send_header("Content-Length", str(10 << 30))
            self.end_headers()
            self.wfile.write(opening)
            return
        self.end_headers()
        try:
            self.wfile.write(opening)
            while True:
                if mode == "drip":
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(self.drip_every)
                else:
                    self.wfile.write(b"a" * 65536)
        except OSError:
            return  # the reader hung up: that is the point
