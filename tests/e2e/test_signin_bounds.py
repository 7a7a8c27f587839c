"""Issue 13: sign-in makes the relay fetch from servers the signer chooses; each fetch is bounded.

A hostile "PDS" on loopback (a thread here) serves a DID whose PDS streams its OAuth metadata
forever, or drips it a byte at a time; the same server, as PLC directory and handle resolver, does the
same with a DID document (handles ``document-*``) and with a handle's well-known file (``handle-*``).
The real relay process refuses the sign-in with a page that says why, its memory stays flat, and
concurrent sign-ins from one address are capped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.peers.hostilehttp import HostileHandler
from tests.peers.httpd import serving

EVIL_DID = "did:plc:evilaaaaaaaaaaaaaaaaaaaa"
EVIL_DOC_DID = "did:plc:evildocaaaaaaaaaaaaaaaaa"  # its DID document is the hostile answer


class Evil(HostileHandler):
    drip_every = 0.5

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        host = self.headers.get("host", "")  # the handle being resolved (handle_resolution = well-known-at)
        if self.path == "/.well-known/atproto-did" and host.startswith("handle-"):
            self._hostile()
        elif self.path == "/.well-known/atproto-did":
            self.send_body((EVIL_DOC_DID if host.startswith("document-") else EVIL_DID).encode(), "text/plain")
        elif self.path == f"/{EVIL_DOC_DID}":
            self._hostile()
        elif self.path == f"/{EVIL_DID}":
            handle = self.headers.get("x-handle", "") or "forever.test"
            doc = {"id": EVIL_DID, "alsoKnownAs": [f"at://{h}" for h in ("forever.test", "drip.test", "huge-length.test", "gzip-bomb.test")]
                   + [f"at://{handle}"],
                   "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                                "serviceEndpoint": f"http://127.0.0.1:{port}"}]}
            self.send_body(json.dumps(doc).encode(), "application/json")
        elif self.path == "/.well-known/oauth-protected-resource":
            self._hostile()
        else:
            self.send_error(404)

    def _hostile(self) -> None:
        self.send_hostile(b'{"authorization_servers": ["http://127.0.0.1/', b'"]}')


@pytest.fixture(scope="module")
def evil() -> Iterator[str]:
    with serving(Evil) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles, evil: str) -> Iterator[RelayProcess]:
    proc = RelayProcess(base=tmp_path_factory.mktemp("signin"), tls=tls_files, extra_toml=(
        f'[identity]\nplc_url = "{evil}"\nhandle_resolution = "well-known-at"\nhandle_resolver_url = "{evil}"\n'
        'deadline = 3.0\nsignins_per_ip = 1\n'))
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


def rss_kib(relay: RelayProcess) -> int:
    assert relay.proc is not None
    for line in Path(f"/proc/{relay.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def sign_in(relay: RelayProcess, handle: str) -> httpx.Response:
    page = httpx.get(f"{relay.http}/enroll", timeout=10)
    cookie = {"Cookie": page.headers["set-cookie"].split(";")[0]}
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    return httpx.post(f"{relay.http}/enroll", data={"csrf": csrf, "handle": handle}, headers=cookie, timeout=30)


def alive(relay: RelayProcess) -> None:
    assert relay.proc is not None and relay.proc.poll() is None
    assert httpx.get(f"{relay.http}/healthz", timeout=5).status_code == 200
    assert not [line for line in relay.output if "Traceback" in line], "".join(relay.output[-60:])


@pytest.mark.parametrize(("mode", "says"), [("forever", "larger than"), ("huge-length", "more than"),
                                            ("gzip-bomb", "larger than"),
                                            ("drip", "did not finish within 3 s")])
def test_hostile_pds_metadata_is_cut_off(relay: RelayProcess, mode: str, says: str) -> None:
    Evil.mode = mode
    before = rss_kib(relay)
    r = sign_in(relay, f"{mode}.test")
    assert r.status_code == 400 and says in r.text, r.text[-2000:]
    assert rss_kib(relay) - before < 64 * 1024  # not the 1.2 GiB of issue 13: a cap of 64 KiB was read
    alive(relay)


@pytest.mark.parametrize(("handle", "mode", "says"), [
    ("document-forever.test", "forever", "larger than"),
    ("document-huge.test", "huge-length", "more than"),
    ("document-gzip.test", "gzip-bomb", "larger than"),
    ("document-drip.test", "drip", "did not finish within 3 s"),
    ("handle-forever.test", "forever", "does not resolve to a DID"),
    ("handle-drip.test", "drip", "within 3 s"),
])
def test_hostile_did_document_and_handle_file_are_cut_off(relay: RelayProcess, handle: str, mode: str,
                                                          says: str) -> None:
    """Issue 13 names DID documents and handle well-known files beside the OAuth metadata: each is read
    within its byte cap (document_bytes, metadata_bytes) and the sign-in's deadline."""
    Evil.mode = mode
    before = rss_kib(relay)
    r = sign_in(relay, handle)
    assert r.status_code == 400 and says in r.text, r.text[-2000:]
    assert rss_kib(relay) - before < 64 * 1024
    alive(relay)


def test_concurrent_sign_ins_from_one_address_are_capped(relay: RelayProcess) -> None:
    Evil.mode = "drip"
    first: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: first.append(sign_in(relay, "drip.test")))
    thread.start()
    time.sleep(0.5)  # let the first one take its slot (signins_per_ip = 1); it holds it for the 3 s deadline
    second = sign_in(relay, "drip.test")
    thread.join(timeout=30)
    assert second.status_code == 429 and second.headers["retry-after"], second.text[-1000:]
    assert "Too many sign-ins from your address" in second.text
    assert first and first[0].status_code == 400
    alive(relay)
