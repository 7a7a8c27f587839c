"""Issue 13: PDS record reads are bounded like the sign-in's fetches.

The labeler reads each member's attestation record from the PDS the member's DID document names: a
stranger's server. A hostile one on loopback (a thread here) streams the record forever, announces a
10 GiB body, sends a gzip bomb or drips a byte at a time; ``get_record`` gives up with an ``error``
that says why, within the record cap (``identity.document_bytes``) and the deadline, and reads an
honest record as before.
"""

from __future__ import annotations

import gzip
import http.server
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from relay.labeler.service import get_record
from relay.net.egress import Egress

DID = "did:plc:recordaaaaaaaaaaaaaaaaaa"
LOOPBACK = Egress(allow_loopback=True, allow_http=True)  # the hostile PDS is a loopback test peer
CAP = 16 * 1024
# A body cut off at the cap leaves httpx's nested stream generators (Response.aiter_bytes -> aiter_raw
# -> BoundAsyncStream / AsyncResponseStream.__aiter__) half-read; Trio closes them when they are
# collected and warns. httpx's own issue (encode/httpx#3686, fix proposed in #3777): the response and
# its connection are closed by ``client.stream``'s exit all the same. Only that warning is ignored here.
pytestmark = pytest.mark.filterwarnings(r"ignore:Async generator 'httpx\._:ResourceWarning")


class HostilePds(http.server.BaseHTTPRequestHandler):
    mode = "forever"  # forever | huge-length | gzip-bomb | drip | honest

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        mode = HostilePds.mode
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if mode == "honest":
            body = json.dumps({"uri": "at://x", "value": {"domain": "mail.example.com"}}).encode()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if mode == "gzip-bomb":  # a few KiB on the wire, 10 MiB decoded
            bomb = gzip.compress(b'{"value": "' + b"a" * (10 << 20) + b'"}')
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)
            return
        if mode == "huge-length":
            self.send_header("Content-Length", str(10 << 30))
            self.end_headers()
            self.wfile.write(b'{"value": "')
            return
        self.end_headers()  # no length: the body ends when the connection does (never)
        try:
            self.wfile.write(b'{"value": "')
            while True:
                if mode == "drip":
                    self.wfile.write(b"a")
                    self.wfile.flush()
                    time.sleep(0.2)
                else:
                    self.wfile.write(b"a" * 65536)
        except OSError:
            return  # the reader hung up: that is the point


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture(scope="module")
def pds() -> Iterator[str]:
    server = Server(("127.0.0.1", 0), HostilePds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("mode", "deadline", "says"), [
    ("forever", 20.0, "larger than"),  # the cap ends these long before the deadline
    ("huge-length", 20.0, "more than"),
    ("gzip-bomb", 20.0, "larger than"),
    ("drip", 1.0, "within 1 s"),  # under the cap at every read: the deadline ends it
])
@pytest.mark.trio
async def test_a_hostile_pds_record_is_cut_off(pds: str, mode: str, deadline: float, says: str) -> None:
    HostilePds.mode = mode
    with trio.fail_after(30):  # the cap or the deadline decides how long this takes, never the server
        fetched = await get_record(pds, DID, "mail.example.com", timeout=5.0, max_bytes=CAP, deadline=deadline,
                                   egress=LOOPBACK)
    assert fetched.status == "error" and says in fetched.detail, fetched
    assert fetched.value is None


@pytest.mark.trio
async def test_an_honest_record_is_read(pds: str) -> None:
    HostilePds.mode = "honest"
    fetched = await get_record(pds, DID, "mail.example.com", max_bytes=CAP, deadline=5.0, egress=LOOPBACK)
    assert fetched.status == "found" and fetched.value == {"domain": "mail.example.com"}, fetched
