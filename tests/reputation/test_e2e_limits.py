"""Warming limits through the real relay process: SMTP 451 4.7.1 at RCPT, HTTP 429 with Retry-After."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import message
from tests.e2e.relayproc import RelayProcess, make_tls

DID = "did:plc:e2erepaaaaaaaaaaaaaaaaaa"
DOMAIN = "warm.example.com"
# Three per hour AND per day: the test holds even if it runs across the top of an hour.
EXTRA_TOML = "[limits]\nwarming_tiers = [[0, 3, 3]]\n"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, str, ssl.SSLContext]]:
    tls = make_tls(tmp_path_factory.mktemp("tls"))
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=tls, extra_toml=EXTRA_TOML)
    proc.write_config()
    key = proc.enroll(DID, DOMAIN)["api_key"]
    proc.start()
    try:
        yield proc, key, ssl.create_default_context(cafile=str(tls.ca_pem))
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop()


def smtp(proc: RelayProcess, key: str, ctx: ssl.SSLContext) -> smtplib.SMTP:
    s = smtplib.SMTP(*proc.submission, timeout=10)
    s.ehlo("client.test")
    s.starttls(context=ctx)
    s.ehlo("client.test")
    s.login(DID, key)
    return s


def http_send(proc: RelayProcess, key: str, to: str) -> httpx.Response:
    return httpx.post(f"{proc.http}/v1/send", timeout=10, json={"from": f"app@{DOMAIN}", "to": to, "text": "hi"},
                      headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": DID})


def test_fourth_send_in_an_hour_is_refused(relay: tuple[RelayProcess, str, ssl.SSLContext]) -> None:
    proc, key, ctx = relay
    with smtp(proc, key, ctx) as s:  # closed even when an assertion fails (no ResourceWarning later)
        for i in range(2):
            s.sendmail(f"app@{DOMAIN}", [f"r{i}@example.org"], message(f"app@{DOMAIN}", f"r{i}@example.org", f"m{i}"))
        ok = http_send(proc, key, "r2@example.org")  # the third: HTTP and SMTP share the domain's budget
        assert ok.status_code == 200, ok.text
        assert (ok.headers["RateLimit-Limit"], ok.headers["RateLimit-Remaining"]) == ("3", "0")

        assert s.mail(f"app@{DOMAIN}")[0] == 250
        code, text = s.rcpt("r3@example.org")
        assert code == 451 and text.startswith(b"4.7.1 "), text
        assert b"warming limit for warm.example.com" in text and b"refills at" in text
        s.rset()

    refused = http_send(proc, key, "r4@example.org")
    assert refused.status_code == 429, refused.text
    body = refused.json()
    assert body["code"] == "RATE_LIMITED" and "warming limit for warm.example.com" in body["error"]
    retry = int(refused.headers["Retry-After"])
    assert 0 < retry <= 24 * 3600
    assert refused.headers["RateLimit-Remaining"] == "0" and refused.headers["RateLimit-Limit"] == "3"

    status = httpx.get(f"{proc.http}/member/status", params={"did": DID}, timeout=10,
                       headers={"Authorization": f"Bearer {key}"}).json()
    (domain,) = status["domains"]
    assert domain["warming"]["tier"] == 1 and domain["warming"]["hourly"]["remaining"] == 0
    assert status["totals"]["accepted"] == 3
