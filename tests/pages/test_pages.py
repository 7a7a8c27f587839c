"""The member pages against the real relay process, a real local PDS and httpx as the browser."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.localpds.fixture import LocalPds, ProbeTls
from tests.pages.conftest import PublicRelay
from tests.pages.helpers import browser, csrf_of, sign_in_through_relay

OTHER_DID = "did:plc:otheraaaaaaaaaaaaaaaaaaa"


@pytest.mark.trio
async def test_public_pages(public_relay: PublicRelay, probe_tls: ProbeTls) -> None:
    async with browser(public_relay, probe_tls) as http:
        for path, text in (("/", "Sign in with your handle"), ("/docs", "/v1/send"), ("/enroll", 'name="handle"')):
            r = await http.get(path)
            assert r.status_code == 200 and text in r.text, path
        account = await http.get("/account")
        assert account.status_code == 303 and account.headers["location"] == "/enroll"


@pytest.mark.trio
async def test_session_cookie_flags(public_relay: PublicRelay, probe_tls: ProbeTls) -> None:
    async with browser(public_relay, probe_tls) as http:
        r = await http.get("/enroll")
        set_cookie = r.headers["set-cookie"]
        assert "atmos_session=" in set_cookie
        for flag in ("HttpOnly", "Secure", "SameSite=Lax", "Path=/"):
            assert flag.lower() in set_cookie.lower(), flag


@pytest.mark.trio
async def test_unknown_handle_is_explained(public_relay: PublicRelay, probe_tls: ProbeTls) -> None:
    async with browser(public_relay, probe_tls) as http:
        page = await http.get("/enroll")
        r = await http.post("/enroll", data={"csrf": csrf_of(page.text), "handle": "nobody.test"})
        assert r.status_code == 400 and "does not resolve to a DID" in r.text


@pytest.mark.trio
async def test_callback_without_this_browsers_state_is_refused(public_relay: PublicRelay, probe_tls: ProbeTls,
                                                              local_pds: LocalPds) -> None:
    async with browser(public_relay, probe_tls) as victim, browser(public_relay, probe_tls) as attacker:
        page = await attacker.get("/enroll")
        r = await attacker.post("/enroll", data={"csrf": csrf_of(page.text), "handle": local_pds.handle})
        from tests.localpds.signin import sign_in
        params = await sign_in(r.headers["location"], local_pds.handle, local_pds.password)
        # login CSRF: the attacker's callback URL opened in another browser signs nobody in
        r = await victim.get(params["_location"].replace(public_relay.public_url, public_relay.local_url))
        assert r.status_code == 400 and "did not start in this browser" in r.text
        assert (await victim.get("/account")).status_code == 303
        r = await attacker.get("/oauth/callback", params={"state": "bogus", "code": "x", "iss": "y"})
        assert r.status_code == 400


@pytest.mark.trio
async def test_member_journey(public_relay: PublicRelay, probe_tls: ProbeTls, local_pds: LocalPds) -> None:
    relay = public_relay.relay
    did = local_pds.did
    async with browser(public_relay, probe_tls) as http:
        r = await sign_in_through_relay(http, public_relay, local_pds)
        assert r.status_code == 303 and r.headers["location"] == "/enroll"
        page = await http.get("/enroll")
        assert did in page.text and 'name="domain"' in page.text
        csrf = csrf_of(page.text)

        # CSRF token missing or wrong: refused, nothing changes
        for data in ({"domain": "nocsrf.example.org"}, {"domain": "nocsrf.example.org", "csrf": "forged"}):
            assert (await http.post("/enroll/domain", data=data)).status_code == 403

        # two domains, the third refused
        r = await http.post("/enroll/domain", data={"csrf": csrf, "domain": "Mail.Example.org"})
        assert r.status_code == 303 and r.headers["location"] == "/enroll/domain/mail.example.org"
        page = await http.get("/enroll/domain/mail.example.org")
        assert "_atmos-challenge.mail.example.org" in page.text and "atmos-verify=" in page.text
        assert "_domainkey.mail.example.org" in page.text and "_dmarc.mail.example.org" in page.text
        assert (await http.post("/enroll/domain", data={"csrf": csrf, "domain": "news.example.org"})).status_code == 303
        r = await http.post("/enroll/domain", data={"csrf": csrf, "domain": "third.example.org"})
        assert r.status_code == 400 and "maximum of 2" in r.text

        # check now: DNS is unreachable in this test (closed port): the page says so, the domain stays pending
        r = await http.post("/enroll/domain/mail.example.org/check", data={"csrf": csrf})
        assert r.status_code == 200 and "pending" in r.text and "Check now" in r.text
        assert "atmos_" not in r.text  # no key before the domain is proven

        # the operator marks it verified (as a DNS check would); the key is shown once, on the next check
        relay.admin("enroll", "--did", did, "--domain", "mail.example.org", "--skip-dns")
        r = await http.post("/account/key", data={"csrf": csrf})
        key1 = re.search(r'<pre id="api-key">(atmos_[^<]+)</pre>', r.text)
        assert key1, r.text
        r = await http.post("/account/key", data={"csrf": csrf})
        key2 = re.search(r'<pre id="api-key">(atmos_[^<]+)</pre>', r.text)
        assert key2 and key2.group(1) != key1.group(1)
        assert "atmos_" not in (await http.get("/account")).text  # never shown again

        async with httpx.AsyncClient(base_url=relay.http) as api:
            def auth(key: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {key}", "X-Atmos-DID": did}
            assert (await api.get("/v1/suppressions", headers=auth(key1.group(1)))).status_code == 401
            assert (await api.get("/v1/suppressions", headers=auth(key2.group(1)))).status_code == 200
            sent = await api.post("/v1/send", headers=auth(key2.group(1)), json={
                "from": "hello@mail.example.org", "to": "friend@example.net", "subject": "Journey", "text": "hi"})
            assert sent.status_code == 200, sent.text
            mine = sent.json()["accepted"][0]["messageId"]
            await api.post("/v1/suppressions", headers=auth(key2.group(1)), json={"recipient": "gone@example.net"})
            other = relay.enroll(OTHER_DID, "other.example.org")
            theirs = await api.post("/v1/send", headers={"Authorization": f"Bearer {other['api_key']}",
                                                         "X-Atmos-DID": OTHER_DID}, json={
                "from": "x@other.example.org", "to": "friend@example.net", "subject": "Secret", "text": "x"})
            assert theirs.status_code == 200, theirs.text
            theirs_id = theirs.json()["accepted"][0]["messageId"]

        account = await http.get("/account")
        assert account.status_code == 200
        assert "friend@example.net" in account.text and "Journey" in account.text and "Secret" not in account.text
        assert "gone@example.net" in account.text and "other.example.org" not in account.text
        assert (await http.get(f"/account/messages/{mine}")).status_code == 200
        assert (await http.get(f"/account/messages/{theirs_id}")).status_code == 404
        assert (await http.get("/enroll/domain/other.example.org")).status_code == 404
        filtered = await http.get("/account", params={"status": "bounced"})
        assert "Journey" not in filtered.text

        r = await http.post("/account/forward", data={"csrf": csrf, "domain": "mail.example.org",
                                                      "forward_to": "me@inbox.example.net"})
        assert r.status_code == 303
        assert 'value="me@inbox.example.net"' in (await http.get("/account")).text
        r = await http.post("/account/forward", data={"csrf": csrf, "domain": "other.example.org",
                                                      "forward_to": "me@inbox.example.net"})
        assert r.status_code == 404
        r = await http.post("/account/suppressions/remove", data={"csrf": csrf, "recipient": "gone@example.net"})
        assert r.status_code == 303
        assert "gone@example.net" not in (await http.get("/account")).text

        relay.admin("members", "suspend", did, "--reason", "too many bounces")
        assert "too many bounces" in (await http.get("/account")).text
        relay.admin("members", "unsuspend", did)

        r = await http.post("/signout", data={"csrf": csrf})
        assert r.status_code == 303
        assert (await http.get("/account")).status_code == 303
