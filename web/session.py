"""Server-side sessions for the member pages (DESIGN §3): the row lives in the store, the cookie
carries only a random token (the store keeps its SHA-256), HttpOnly + SameSite=Lax (+ Secure unless
a dev relay is served over plain http). Every session has a CSRF token; every form posts it back.

A browser gets an anonymous session when it first needs one (the handle form must carry a CSRF token
and the OAuth ``state`` is bound to the browser that asked for it). An anonymous session costs the
store nothing until it holds something: its CSRF token is an HMAC of the cookie under the relay's
secret (so a GET /enroll from anyone writes no row, issue 13), and the row is written when a sign-in
starts (POST /enroll, which stores the OAuth state). Signing in replaces the session with a new
token (no fixation); signing out deletes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

from quart import Response, current_app, g, request

from relay.app.services import Services
from relay.store.rows import WebSession

COOKIE = "atmos_session"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32); anything else is no session
ANONYMOUS_TTL = 3600.0  # a sign-in must finish within an hour
MEMBER_TTL = 7 * 86400.0  # then the member signs in again


class CsrfFailed(Exception):
    """The form's CSRF token is missing or wrong (answered 403)."""


@dataclass
class Session:
    row: WebSession
    token: str  # the cookie value; only its hash is stored
    data: dict[str, Any] = field(default_factory=dict)
    send_cookie: bool = False

    @property
    def did(self) -> str | None:
        return self.row.did

    @property
    def handle(self) -> str | None:
        return self.row.handle

    @property
    def csrf(self) -> str:
        return self.row.csrf


def _svc() -> Services:
    svc: Services = current_app.extensions["atmos"]
    return svc


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new(did: str | None = None, handle: str | None = None) -> Session:
    token = secrets.token_urlsafe(32)
    return Session(row=_row(token, did, handle), token=token, send_cookie=True)


def _row(token: str, did: str | None = None, handle: str | None = None) -> WebSession:
    now = time.time()
    ttl = MEMBER_TTL if did else ANONYMOUS_TTL
    csrf = secrets.token_urlsafe(24) if did else _anonymous_csrf(token)
    return WebSession(id_hash=_hash(token), csrf=csrf, created_at=now, expires_at=now + ttl, did=did, handle=handle)


def _anonymous_csrf(token: str) -> str:
    """Bound to the cookie and the relay's secret: checkable with no stored row (double submit, keyed)."""
    return hmac.new(_svc().cfg.secret_key, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()


async def current() -> Session | None:
    """The request's session, if its cookie names a live one (cached on ``g``)."""
    if "web_session" in g:
        found: Session | None = g.web_session
        return found
    session = None
    token = request.cookies.get(COOKIE, "")
    if _TOKEN.fullmatch(token):
        row = await _svc().store.get_web_session(_hash(token), time.time())
        if row is not None:
            try:
                data = json.loads(row.data)
            except ValueError:
                data = {}
            session = Session(row=row, token=token, data=data if isinstance(data, dict) else {})
        else:  # an anonymous session not saved yet (or one that expired): anonymous, same cookie
            session = Session(row=_row(token), token=token)
    g.web_session = session
    return session


async def ensure() -> Session:
    """The request's session, creating an anonymous one when there is none (not saved: see above)."""
    session = await current()
    if session is None:
        session = _new()
        g.web_session = session
    return session


async def save(session: Session) -> None:
    session.row = replace(session.row, data=json.dumps(session.data, separators=(",", ":")))
    await _svc().store.put_web_session(session.row)


async def sign_in(did: str, handle: str | None) -> Session:
    """Replace the browser's session with a fresh signed-in one."""
    store = _svc().store
    old = await current()
    if old is not None:
        await store.delete_web_session(old.row.id_hash)
    await store.purge_web_sessions(time.time())  # expired sessions go here (sign-ins are rare, the DELETE indexed)
    session = _new(did, handle)
    await save(session)
    g.web_session = session
    return session


async def sign_out() -> None:
    old = await current()
    if old is not None:
        await _svc().store.delete_web_session(old.row.id_hash)
    g.web_session = None
    g.web_session_cleared = True


def check_csrf(session: Session | None, form: Any) -> None:
    sent = form.get("csrf", "") if form is not None else ""
    if session is None or not sent or not hmac.compare_digest(str(sent), session.csrf):
        raise CsrfFailed()


def apply_cookie(resp: Response) -> Response:
    """``after_request``: send the cookie of a new session, or clear it after sign-out."""
    cfg = _svc().cfg
    secure = not cfg.dev or cfg.public_url.startswith("https://")
    session: Session | None = g.get("web_session")
    if session is not None and session.send_cookie:
        resp.set_cookie(COOKIE, session.token, max_age=int(session.row.expires_at - time.time()), path="/",
                        secure=secure, httponly=True, samesite="Lax")
    elif g.get("web_session_cleared"):
        resp.delete_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="Lax")
    if session is not None:
        resp.headers["Cache-Control"] = "no-store"
    return resp
