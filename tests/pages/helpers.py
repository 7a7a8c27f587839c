from __future__ import annotations

import re
import ssl

import httpx

from tests.localpds.fixture import LocalPds, ProbeTls
from tests.localpds.signin import sign_in
from tests.pages.conftest import PublicRelay


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def browser(pr: PublicRelay, tls: ProbeTls) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=pr.local_url, verify=ssl.create_default_context(cafile=str(tls.ca_pem)),
                             timeout=30)


async def sign_in_through_relay(http: httpx.AsyncClient, pr: PublicRelay, pds: LocalPds) -> httpx.Response:
    """/enroll handle form -> PDS sign-in + consent (JSON API) -> the relay's callback; returns its response."""
    page = await http.get("/enroll")
    assert page.status_code == 200
    r = await http.post("/enroll", data={"csrf": csrf_of(page.text), "handle": pds.handle})
    assert r.status_code == 303, r.text
    params = await sign_in(r.headers["location"], pds.handle, pds.password)
    assert params["_location"].startswith(pr.public_url + "/oauth/callback?")
    return await http.get(params["_location"].replace(pr.public_url, pr.local_url))
