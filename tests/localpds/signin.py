"""Drive the PDS's sign-in and consent pages through their own JSON API (no browser).

This is ``@atproto/oauth-provider``'s internal UI API (pinned with ``@atproto/pds`` 0.5.35): GET the
authorize page (sets csrf/device cookies), POST ``~api/sign-in`` and ``~api/consent``, then follow the
returned URL to the 303 that carries ``code``, ``state`` and ``iss`` to the client's redirect_uri.
"""

from __future__ import annotations

import urllib.parse
from http.cookies import SimpleCookie
from typing import Any

import httpx

NAVIGATE = {"sec-fetch-mode": "navigate", "sec-fetch-dest": "document", "sec-fetch-site": "cross-site"}


class SignInRefused(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


async def sign_in(authorize_url: str, username: str, password: str) -> dict[str, str]:
    """Returns the redirect's query parameters (code, state, iss)."""
    cookies: dict[str, str] = {}

    def keep(resp: httpx.Response) -> None:
        for value in resp.headers.get_list("set-cookie"):
            c: SimpleCookie = SimpleCookie()
            c.load(value)
            cookies.update({k: m.value for k, m in c.items()})

    def cookie_header() -> str:
        return "; ".join(f"{k}={v}" for k, v in cookies.items())

    parts = urllib.parse.urlsplit(authorize_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.get(authorize_url, headers=NAVIGATE)
        keep(r)
        r.raise_for_status()

        async def api(path: str, body: dict[str, Any]) -> Any:
            resp = await http.post(f"{origin}/@atproto/oauth-provider/~api{path}", json=body, headers={
                "sec-fetch-mode": "same-origin", "sec-fetch-site": "same-origin", "sec-fetch-dest": "empty",
                "origin": origin, "referer": authorize_url, "x-csrf-token": cookies.get("csrf-token", ""),
                "cookie": cookie_header()})
            keep(resp)
            if resp.status_code >= 400:
                raise SignInRefused(resp.status_code, resp.json())
            return resp.json()

        account = (await api("/sign-in", {"locale": "en", "username": username, "password": password,
                                          "remember": True}))["account"]
        url = (await api("/consent", {"did": account["did"]}))["url"]
        r = await http.get(url, headers={**NAVIGATE, "sec-fetch-site": "same-origin", "referer": authorize_url,
                                         "cookie": cookie_header()})
        if r.status_code != 303:
            raise SignInRefused(r.status_code, r.text[:500])
        location = r.headers["location"]
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query)) | {"_location": location}
