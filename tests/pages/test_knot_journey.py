"""The whole member journey with real DNS (Knot) and a real recipient MTA (smtp-sink): sign in, enroll a
domain, publish the records the page shows, "Check now" -> verified -> the API key shown once -> send over
SMTP with it -> the message's status on /account moves to sent.
"""

from __future__ import annotations

import html
import re
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.localpds.fixture import LocalPds, ProbeTls
from tests.pages.conftest import PublicRelay, public_relay_process
from tests.pages.helpers import browser, csrf_of, sign_in_through_relay
from tests.peers.knot import KnotServer
from tests.peers.smtpsink import SmtpSink

DOMAIN = "journey.example.org"
ZONES = {
    DOMAIN: ["@ 300 A 127.0.0.1"],
    "inbox.example": ["@ 300 MX 10 mx.inbox.example.", "mx 300 A 127.0.0.1"],
}


@pytest.fixture
def dns(tmp_path: Path) -> Iterator[KnotServer]:
    with KnotServer(tmp_path / "knot", ZONES) as server:
        yield server


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path / "sink").start()
    yield s
    s.stop()


@pytest.fixture
def relay(tmp_path: Path, local_pds: LocalPds, probe_tls: ProbeTls, dns: KnotServer,
          sink: SmtpSink) -> Iterator[PublicRelay]:
    ns = dns.nameservers[0]
    extra = (f'[dns]\nnameservers = ["{ns}"]\nrelay_ips = ["192.0.2.25"]\n'
             f'[delivery]\nport = {sink.port}\nnameservers = ["{ns}"]\n')
    with public_relay_process(tmp_path / "relay", local_pds, probe_tls, extra) as pr:
        yield pr


def _send_smtp(pr: PublicRelay, did: str, key: str) -> None:
    ctx = ssl.create_default_context(cafile=str(pr.relay.tls.ca_pem))
    host, port = pr.relay.submission
    with smtplib.SMTP(host, port, timeout=20) as smtp:
        smtp.starttls(context=ctx)
        smtp.login(did, key)
        smtp.sendmail(f"hello@{DOMAIN}", ["friend@inbox.example"],
                      f"From: hello@{DOMAIN}\r\nTo: friend@inbox.example\r\nSubject: knot-journey\r\n"
                      "X-Atmos-Category: transactional\r\n\r\nHello from the journey.\r\n")


@pytest.mark.trio
async def test_enroll_verify_send_and_watch_status(relay: PublicRelay, local_pds: LocalPds, probe_tls: ProbeTls,
                                                   dns: KnotServer, sink: SmtpSink) -> None:
    async with browser(relay, probe_tls) as http:
        assert (await sign_in_through_relay(http, relay, local_pds)).status_code == 303
        csrf = csrf_of((await http.get("/enroll")).text)
        assert (await http.post("/enroll/domain", data={"csrf": csrf, "domain": DOMAIN})).status_code == 303

        r = await http.post(f"/enroll/domain/{DOMAIN}/check", data={"csrf": csrf})
        assert r.status_code == 200 and "missing" in r.text and "pending" in r.text
        assert 'id="api-key"' not in r.text

        zone = re.search(r'<pre class="zone">(.*?)</pre>', r.text, re.S)
        assert zone
        dns.update(DOMAIN, [*ZONES[DOMAIN], *html.unescape(zone.group(1)).strip().splitlines()])

        r = await http.post(f"/enroll/domain/{DOMAIN}/check", data={"csrf": csrf})
        key = re.search(r'<pre id="api-key">(atmos_[^<]+)</pre>', r.text)
        assert r.status_code == 200 and key, r.text
        assert "Ownership: <span class=\"status status-verified\">verified</span>" in r.text
        assert local_pds.did in r.text  # the quick-start names the member's DID
        again = await http.post(f"/enroll/domain/{DOMAIN}/check", data={"csrf": csrf})
        assert 'id="api-key"' not in again.text  # shown once

        await trio.to_thread.run_sync(_send_smtp, relay, local_pds.did, key.group(1))
        deadline = time.monotonic() + 30
        while True:
            account = (await http.get("/account", params={"status": "sent"})).text
            if "knot-journey" in account:
                break
            assert time.monotonic() < deadline, account
            await trio.sleep(0.2)
        assert any(b"knot-journey" in m.data for m in sink.messages())

        # regenerate: the old key gets 535 at once, the new one works
        r = await http.post("/account/key", data={"csrf": csrf})
        new_key = re.search(r'<pre id="api-key">(atmos_[^<]+)</pre>', r.text)
        assert new_key
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            await trio.to_thread.run_sync(_send_smtp, relay, local_pds.did, key.group(1))
        assert refused.value.smtp_code == 535
        await trio.to_thread.run_sync(_send_smtp, relay, local_pds.did, new_key.group(1))
