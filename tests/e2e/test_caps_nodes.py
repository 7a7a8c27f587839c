"""One relay whatever the number of nodes (issue 17): two ``atmos serve`` processes ("machines") on one
real PostgreSQL hold a fresh domain's 5/hour warming cap together, and a suspension written to the
store ends an SMTP session already open on the other machine at its next MAIL FROM.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from pathlib import Path

import httpx

from relay.store import open_store
from tests.e2e.conftest import DID, DOMAIN, HANDLE
from tests.e2e.relayproc import TLSFiles, two_machines
from tests.peers.postgres import postgres_server, postgres_url  # noqa: F401  (registers the fixtures)


def send(http: str, key: str, n: int) -> httpx.Response:
    return httpx.post(f"{http}/v1/send", headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": DID},
                      json={"from": f"hello@{DOMAIN}", "to": f"rcpt{n}@example.org", "subject": f"n{n}", "text": "hi"},
                      timeout=20)


def test_warming_cap_and_suspension_across_two_machines(
    tmp_path: Path, tls_files: TLSFiles, client_ctx: ssl.SSLContext, postgres_url: str  # noqa: F811
) -> None:
    # The default warming tiers (relayproc lifts every cap a test does not set).
    store = f'[store]\nurl = "{postgres_url}"\n[limits]\nwarming_tiers = [[0, 5, 20], [7, 10, 50]]\n'
    with two_machines(tmp_path, tls_files, store, (DID, DOMAIN, HANDLE)) as (a, b, key):
        # A fresh domain: 5 recipients an hour, wherever the sends arrive (here alternating machines).
        answers = [send((a, b)[n % 2].http, key, n) for n in range(10)]
        codes = [r.status_code for r in answers]
        assert codes.count(200) == 5 and codes.count(429) == 5, [r.text for r in answers]
        refused = answers[codes.index(429)].json()
        assert refused["code"] == "RATE_LIMITED" and refused["limit"]["name"] == "domain-hourly", refused

        # An SMTP session open on machine B; the member is suspended through the store (as `atmos admin`
        # on any machine would): B's next MAIL FROM in that session is refused.
        s = smtplib.SMTP(*b.submission, timeout=10)
        try:
            s.starttls(context=client_ctx)
            s.login(HANDLE, key)
            with open_store(postgres_url) as admin:
                admin.set_member_status(DID, "suspended", "operator: e2e")
            deadline = time.monotonic() + 10
            while True:  # bounded by the deadline; the relay's own bound is 1 s (tests/reputation)
                code, reply = s.mail(f"hello@{DOMAIN}")
                if code != 250:
                    break
                s.rset()
                assert time.monotonic() < deadline, "the suspension never reached machine B"
                time.sleep(0.1)
            assert (code, b"operator: e2e" in reply) == (521, True), reply
        finally:
            s.close()
        assert b.stop(timeout=60) == 0
