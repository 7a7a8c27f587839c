"""Issue 13: PDS record reads are bounded like the sign-in's fetches.

The labeler reads each member's attestation record from the PDS the member's DID document names: a
stranger's server. A hostile one on loopback (a thread here) streams the record forever, announces a
10 GiB body, sends a gzip bomb or drips a byte at a time; ``get_record`` gives up with an ``error``
that says why, within the record cap (``identity.document_bytes``) and the deadline, and reads an
honest record as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import trio

from relay.labeler.service import get_record
from relay.net.egress import Egress
from tests.peers.hostilehttp import HostileHandler
from tests.peers.httpd import serving

DID = "did:plc:recordaaaaaaaaaaaaaaaaaa"
LOOPBACK = Egress(allow_loopback=True, allow_http=True)  # the hostile PDS is a loopback test peer
CAP = 16 * 1024
# A body cut off at the cap leaves httpx's nested stream generators (Response.aiter_bytes -> aiter_raw
# -> BoundAsyncStream / AsyncResponseStream.__aiter__) half-read; Trio closes them when they are
# collected and warns. httpx's own issue (encode/httpx#3686, fix proposed in #3777): the response and
# its connection are closed by ``client.stream``'s exit all the same. Only that warning is ignored here.
pytestmark = pytest.mark.filterwarnings(r"ignore:Async generator 'httpx\._:ResourceWarning")


class HostilePds(HostileHandler):
    mode = "forever"  # one of MODES, or "honest"

    def do_GET(self) -> None:
        if HostilePds.mode == "honest":
            body = json.dumps({"uri": "at://x", "value": {"domain": "mail.example.com"}}).encode()
            self.send_body(body, "application/json")
        else:
            self.send_hostile(b'{"value": "', b'"}')


@pytest.fixture(scope="module")
def pds() -> Iterator[str]:
    with serving(HostilePds) as port:
        yield f"http://127.0.0.1:{port}"


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
