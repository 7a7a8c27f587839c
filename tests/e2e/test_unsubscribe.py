"""RFC 8058 one-click unsubscribe and the suppression API, over real HTTP against the relay process."""

from __future__ import annotations

import httpx

from relay.mail.unsubscribe import make_token
from tests.e2e.conftest import Member
from tests.e2e.relayproc import RelayProcess

SECRET = b"secret-key-" + b"y" * 24  # RelayProcess's ATMOS_SECRET_KEY


def auth(member: Member) -> dict[str, str]:
    return {"Authorization": f"Bearer {member.key}", "X-Atmos-DID": member.did}


def send(relay: RelayProcess, member: Member, to: str, category: str | None = None) -> httpx.Response:
    body = {"from": f"news@{member.domain}", "to": to, "subject": "news", "text": "hi"}
    if category:
        body["category"] = category
    return httpx.post(f"{relay.http}/v1/send", headers=auth(member), json=body, timeout=10)


def test_one_click_post_suppresses_and_get_does_not(relay: RelayProcess, member: Member) -> None:
    url = f"{relay.http}/u/{make_token(SECRET, member.did, 'Reader@Example.org')}"
    page = httpx.get(url)
    assert page.status_code == 200 and "<form method=\"post\"" in page.text and "reader@example.org" in page.text
    assert send(relay, member, "reader@example.org").json()["rejected"] == []  # GET changed nothing
    r = httpx.post(url, content=b"List-Unsubscribe=One-Click",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and "unsubscribed" in r.text
    out = send(relay, member, "reader@example.org").json()
    assert out["accepted"] == [] and out["rejected"][0]["reason"] == "suppressed recipient"
    assert send(relay, member, "reader@example.org", category="login-link").json()["accepted"]
    listed = httpx.get(f"{relay.http}/v1/suppressions", headers=auth(member)).json()["suppressions"]
    assert [s["recipient"] for s in listed if s["recipient"] == "reader@example.org"]


def test_forged_token_is_refused(relay: RelayProcess, member: Member) -> None:
    token = make_token(b"not-the-relay-secret-xxxxxxxxxxxx", member.did, "victim@example.org")
    r = httpx.post(f"{relay.http}/u/{token}", content=b"List-Unsubscribe=One-Click")
    assert r.status_code == 404 and "not valid" in r.text
    assert httpx.post(f"{relay.http}/u/garbage", content=b"").status_code == 404


def test_suppression_api_add_list_remove(relay: RelayProcess, member: Member) -> None:
    base = f"{relay.http}/v1/suppressions"
    r = httpx.post(base, headers=auth(member), json={"recipient": "Block@Example.org", "reason": "asked by phone"})
    assert r.status_code == 201 and r.json()["recipient"] == "block@example.org"
    assert httpx.post(base, headers=auth(member), json={"recipient": "nope"}).json()["code"] == "INVALID_REQUEST"
    rows = httpx.get(base, headers=auth(member)).json()["suppressions"]
    assert {"recipient": "block@example.org", "reason": "asked by phone"}.items() <= next(
        s for s in rows if s["recipient"] == "block@example.org").items()
    assert send(relay, member, "block@example.org").json()["accepted"] == []
    assert httpx.delete(f"{base}/block@example.org", headers=auth(member)).json()["removed"] is True
    assert httpx.delete(f"{base}/block@example.org", headers=auth(member)).status_code == 404
    assert send(relay, member, "block@example.org").json()["accepted"]
    assert httpx.get(base).status_code == 400  # the API needs the member's key
