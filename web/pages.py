"""Member pages (DESIGN §3): /, /docs, /enroll, /account, sign-in with an atproto handle, sign-out.

Server-rendered, usable without JavaScript, one stylesheet. Every form carries the session's CSRF
token; every member page reads and changes only the signed-in DID's data (another member's message
or domain is a 404, never a 403 that would confirm it exists).

Sign-in: ``POST /enroll`` (handle) -> the member's PDS (PAR + PKCE + DPoP + private_key_jwt, see
``relay.oauth``) -> ``GET /oauth/callback`` (state bound to this browser's session, iss, sub) ->
a fresh signed-in session.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from contextlib import AbstractContextManager
from typing import Any

import trio
from quart import Blueprint, Response, current_app, render_template, request

from relay.accept.category import TRANSACTIONAL, parse_category
from relay.app.services import Services
from relay.dns.checks import DomainReport
from relay.dns.records import DnsRecord, records_for
from relay.dns.verifier import check_once, expected_records
from relay.errors import RelayError
from relay.identity import IdentityError
from relay.mail.dkimkeys import new_domain_keys
from relay.members.apikey import generate_api_key
from relay.members.enrolment import enroll_domain
from relay.members.webhooks import EVENT_TYPES
from relay.net.slots import Slots, SlotsFull
from relay.oauth import OAuthError
from relay.store.base import MAX_DOMAINS_PER_DID, DomainLimitReached, DomainTaken, StoreError
from relay.store.rows import MESSAGE_STATUSES, Domain
from web import forwardto
from web import session as sessions
from web.api import BATCH_MAX
from web.auth import oauth_client
from web.member import _parse_forward
from web.openapi import ERRORS

log = logging.getLogger("web.pages")
blueprint = Blueprint("pages", __name__)
PAGE_SIZE = 25


def _svc() -> Services:
    svc: Services = current_app.extensions["atmos"]
    return svc


@blueprint.after_request
async def _cookie(resp: Response) -> Response:
    return sessions.apply_cookie(resp)


@blueprint.errorhandler(sessions.CsrfFailed)
async def _csrf_failed(exc: sessions.CsrfFailed) -> tuple[str, int]:
    return await _page("error.html", title="Form expired",
                       message="This form is out of date or did not come from this site. Go back, reload the "
                               "page and try again."), 403


def submission_port(svc: Services) -> int:
    """The port members submit to: the one the relay bound (the configured one, or the kernel's pick
    for port 0), not a hard-coded 587."""
    return svc.bound.smtp_ports(svc.cfg)[0]


async def _page(template: str, **ctx: Any) -> str:
    session = await sessions.current()
    cfg = _svc().cfg
    ctx.setdefault("session", session)
    ctx.setdefault("csrf", session.csrf if session else "")
    ctx.setdefault("public_url", cfg.public_url)
    ctx.setdefault("operator_domain", cfg.operator_domain)
    ctx.setdefault("smtp_host", cfg.smtp.hostname or cfg.operator_domain)
    ctx.setdefault("smtp_port", submission_port(_svc()))
    return await render_template(template, **ctx)


async def _form() -> Any:
    form = await request.form
    sessions.check_csrf(await sessions.current(), form)
    return form


async def _member_session() -> sessions.Session | None:
    session = await sessions.current()
    return session if session is not None and session.did else None


def _redirect(url: str, status: int = 303) -> Response:
    return Response("", status=status, headers={"Location": url})


def _to_enroll() -> Response:
    return _redirect("/enroll", 303)


# -- public pages --------------------------------------------------------------------------------


@blueprint.get("/")
async def home() -> str:
    return await _page("home.html")


#: /docs/<guide>: (template, title), in the order the index lists them.
GUIDES: dict[str, tuple[str, str]] = {
    "api": ("docs_api.html", "HTTP API"),
    "smtp": ("docs_smtp.html", "SMTP settings"),
    "dns": ("docs_dns.html", "DNS records"),
    "warming": ("docs_warming.html", "Warming and rate limits"),
    "forwarding": ("docs_forwarding.html", "Reply forwarding"),
    "bounces": ("docs_bounces.html", "Bounces and suppression"),
    "labels": ("docs_labels.html", "Labels"),
    "troubleshooting": ("docs_troubleshooting.html", "Troubleshooting"),
}


def docs_context(svc: Services) -> dict[str, Any]:
    """What the guides show, from the running relay: bound ports, host names, limits, error codes.

    Dev shows the loopback address it is bound to; production the operator's public names.
    """
    cfg = svc.cfg
    port_587, port_465 = svc.bound.smtp_ports(cfg)
    if cfg.dev and svc.bound.submission:
        smtp_host = svc.bound.submission[0][0]
    else:
        smtp_host = cfg.smtp.hostname or cfg.operator_domain
    example = records_for("your-domain.example", did="did:plc:your-did", verify_token="<token from your domain page>",
                          selector="atmos", rsa_txt="v=DKIM1; k=rsa; p=<your RSA key>",
                          ed25519_txt="v=DKIM1; k=ed25519; p=<your Ed25519 key>", cfg=cfg)
    return {
        "public_url": cfg.public_url, "smtp_host": smtp_host, "smtp_port": port_587,
        "smtps_port": port_465, "limits": cfg.limits, "suspension": cfg.suspension, "guides": GUIDES,
        "errors": ERRORS, "transactional": sorted(TRANSACTIONAL), "example_records": example,
        "mx_host": cfg.dns.mx_host or cfg.operator_domain, "batch_max": BATCH_MAX,
        "labeler_did": cfg.labeler.did or "did:web:" + (urllib.parse.urlsplit(cfg.public_url).hostname or ""),
        "event_types": EVENT_TYPES,
    }


@blueprint.get("/docs")
async def docs() -> str:
    return await _page("docs.html", **docs_context(_svc()))


@blueprint.get("/docs/<guide>")
async def docs_guide(guide: str) -> tuple[str, int] | str:
    if guide not in GUIDES:
        return await _not_found()
    template, title = GUIDES[guide]
    return await _page(template, title=title, **docs_context(_svc()))


# -- sign-in -------------------------------------------------------------------------------------


@blueprint.get("/enroll")
async def enroll() -> str | Response:
    session = await sessions.ensure()
    if not session.did:
        return await _page("enroll.html", step="handle", session=session, csrf=session.csrf)
    domains = await _svc().store.domains_for(session.did)
    return await _page("enroll.html", step="domain", domains=domains, max_domains=MAX_DOMAINS_PER_DID)


def _signin_slot() -> AbstractContextManager[None]:
    """One of the sign-in slots (relay.net.slots): every step fetches from servers the signer chose."""
    slots: Slots = current_app.extensions["atmos.signins"]
    return slots.hold(request.remote_addr or "")


async def _busy(exc: SlotsFull, handle: str = "") -> Response:
    message = ("Too many sign-ins from your address at once. Wait a moment and try again." if exc.per_key else
               "The relay is handling many sign-ins right now. Try again in a minute.")
    resp = Response(await _page("enroll.html", step="handle", error=message, handle=handle),
                    status=429 if exc.per_key else 503, content_type="text/html")
    resp.headers["Retry-After"] = "10" if exc.per_key else "60"
    return resp


@blueprint.post("/enroll")
async def enroll_start() -> tuple[str, int] | Response:
    form = await _form()
    session = await sessions.ensure()
    handle = str(form.get("handle", "")).strip()
    try:
        with _signin_slot():
            url, pending = await (await oauth_client()).start(handle)
    except SlotsFull as exc:
        return await _busy(exc, handle)
    except (IdentityError, OAuthError) as exc:
        return await _page("enroll.html", step="handle", error=str(exc), handle=handle), 400
    session.data["oauth_state"] = pending.state
    await sessions.save(session)
    return _redirect(url, 303)


@blueprint.get("/oauth/callback")
async def oauth_callback() -> tuple[str, int] | Response:
    session = await sessions.current()
    params = {k: v for k, v in request.args.items()}
    if session is None or not params.get("state") or session.data.get("oauth_state") != params["state"]:
        return await _page("enroll.html", step="handle",
                           error="This sign-in did not start in this browser, or it expired. Start again."), 400
    try:
        with _signin_slot():
            tokens = await (await oauth_client()).callback(params)
    except SlotsFull as exc:
        return await _busy(exc)
    except (IdentityError, OAuthError) as exc:
        return await _page("enroll.html", step="handle", error=f"Sign-in failed: {exc}"), 400
    svc = _svc()
    existing = await svc.store.get_member(tokens.sub)
    await svc.store.create_member(tokens.sub, tokens.handle)
    await sessions.sign_in(tokens.sub, tokens.handle)
    has_domains = existing is not None and bool(await svc.store.domains_for(tokens.sub))
    return _redirect("/account" if has_domains else "/enroll", 303)


@blueprint.post("/signout")
async def signout() -> Response:
    await _form()
    await sessions.sign_out()
    return _redirect("/", 303)


# -- enrolling a domain --------------------------------------------------------------------------


@blueprint.post("/enroll/domain")
async def add_domain() -> tuple[str, int] | Response:
    form = await _form()
    session = await _member_session()
    if session is None or session.did is None:
        return _to_enroll()
    svc = _svc()
    raw = str(form.get("domain", "")).strip()
    from relay.address import is_domain, normalize_domain

    domain = normalize_domain(raw)
    error = None
    if not is_domain(domain):
        error = f"{raw!r} is not a domain name (expected something like mail.example.com)"
    else:
        try:
            await _create_domain(svc, session.did, domain)
        except DomainLimitReached:
            error = f"You already have the maximum of {MAX_DOMAINS_PER_DID} sending domains."
        except DomainTaken:
            error = f"{domain} is already enrolled by another member."
    if error is not None:
        domains = await svc.store.domains_for(session.did)
        return await _page("enroll.html", step="domain", domains=domains, max_domains=MAX_DOMAINS_PER_DID,
                           error=error, domain_value=raw), 400
    return _redirect(f"/enroll/domain/{urllib.parse.quote(domain)}", 303)


async def _create_domain(svc: Services, did: str, domain: str) -> None:
    """As ``atmos admin enroll`` (relay.members.enrolment): a pending domain, or a competing claim."""
    keys = await trio.to_thread.run_sync(new_domain_keys, domain)
    await svc.store.call(enroll_domain, svc.cfg, did, domain, keys)


async def _own_domain(domain: str) -> tuple[sessions.Session, Domain] | None:
    session = await _member_session()
    if session is None or session.did is None:
        return None
    row = await _own_row(session.did, domain)
    return None if row is None else (session, row)


async def _own_row(did: str, domain: str) -> Domain | None:
    """The DID's own row of ``domain``: its enrolled domain or its competing pending claim."""
    wanted = domain.strip().lower().rstrip(".")
    return next((d for d in await _svc().store.domains_for(did) if d.domain == wanted), None)


async def _records(row: Domain) -> list[DnsRecord]:
    cfg = _svc().cfg
    return await trio.to_thread.run_sync(expected_records, row, cfg, cfg.secret_key)


def _last_report(domain: str) -> DomainReport | None:
    verifier = _svc().verifier
    return verifier.last_report(domain) if verifier is not None else None


async def _check(domain: str, did: str) -> DomainReport:
    svc = _svc()
    if svc.verifier is not None:
        report: DomainReport = await svc.verifier.check(domain, did=did)
        return report
    return await check_once(svc.cfg, svc.store, domain)


@blueprint.get("/enroll/domain/<domain>")
async def domain_page(domain: str) -> tuple[str, int] | str | Response:
    found = await _own_domain(domain)
    if found is None:
        return await _not_found()
    _, row = found
    return await _page("enroll_domain.html", domain=row, records=await _records(row), report=_last_report(row.domain))


@blueprint.post("/enroll/domain/<domain>/check")
async def domain_check(domain: str) -> tuple[str, int] | str | Response:
    await _form()
    found = await _own_domain(domain)
    if found is None:
        return await _not_found()
    session, row = found
    assert session.did is not None
    svc = _svc()
    error = None
    report = None
    try:
        report = await _check(row.domain, session.did)
    except (StoreError, OSError, ValueError) as exc:
        error = f"The check could not run: {exc}"
    row = await _own_row(session.did, row.domain) or row
    api_key = None
    if row.state == "verified" and await svc.store.get_api_key_hash(session.did) is None:
        api_key = await _new_api_key(svc, session.did)
    return await _page("enroll_domain.html", domain=row, records=await _records(row), report=report,
                       error=error, api_key=api_key, did=session.did, checked=True)


async def _new_api_key(svc: Services, did: str) -> str:
    key = generate_api_key()
    await svc.store.set_api_key_hash(did, await svc.keys.hash(key))
    svc.keys.forget(did)  # the old key stops working at once
    return key


# -- account -------------------------------------------------------------------------------------


@blueprint.get("/account")
async def account() -> str | Response:
    session = await _member_session()
    if session is None or session.did is None:
        return _to_enroll()
    svc = _svc()
    did = session.did
    member = await svc.store.get_member(did)
    domains = await svc.store.domains_for(did)
    status = request.args.get("status", "")
    status_filter = status if status in MESSAGE_STATUSES else None
    before = request.args.get("before", "")
    before_id = int(before) if before.isdigit() else None
    rows = await svc.store.list_messages(did=did, status=status_filter, limit=PAGE_SIZE + 1,
                                         before_id=before_id)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    next_before = rows[-1].id if more and rows else None
    records = {d.domain: await _records(d) for d in domains}
    return await _page(
        "account.html", member=member, domains=domains, records=records,
        reports={d.domain: _last_report(d.domain) for d in domains}, max_domains=MAX_DOMAINS_PER_DID,
        messages=rows, statuses=MESSAGE_STATUSES, status=status_filter or "", next_before=next_before,
        suppressions=await svc.store.list_suppressions(did), has_key=await svc.store.get_api_key_hash(did) is not None,
        notice=request.args.get("notice", ""), labels=await _current_labels(svc, did),
        transactional_categories=sorted(TRANSACTIONAL),
    )


async def _current_labels(svc: Services, did: str) -> list[str]:
    return [] if svc.labeler is None else list(await svc.labeler.labels_in_force(did))


@blueprint.post("/account/domain/<domain>/check")
async def account_check(domain: str) -> tuple[str, int] | str | Response:
    return await domain_check(domain)


@blueprint.post("/account/key")
async def regenerate_key() -> str | Response:
    await _form()
    session = await _member_session()
    if session is None or session.did is None:
        return _to_enroll()
    key = await _new_api_key(_svc(), session.did)
    return await _page("api_key.html", api_key=key, did=session.did)


@blueprint.post("/account/forward")
async def set_forward() -> tuple[str, int] | str | Response:
    form = await _form()
    found = await _own_domain(str(form.get("domain", "")))
    if found is None:
        return await _not_found()
    _, row = found
    if row.claim:  # a competing claim: the domain's row is someone else's until this DID proves it
        return await _page("error.html", title="Forward-to not changed",
                           message=f"{row.domain} is not yours yet: publish its DNS records and check first"), 409
    try:
        domain, target = _parse_forward({"domain": row.domain, "forward_to": str(form.get("forward_to", ""))})
    except RelayError as exc:
        return await _page("error.html", title="Forward-to not changed", message=str(exc)), 400
    updated = await _svc().store.set_forward_to(domain, target)
    try:
        sent = await forwardto.after_change(_svc(), updated)
    except RelayError as exc:
        return await _page("error.html", title="Confirmation not sent", message=str(exc)), 429
    if not target:
        notice = f"Replies to {domain} are no longer forwarded."
    elif sent:
        notice = f"We sent a confirmation link to {target}: replies to {domain} are forwarded once it is followed."
    else:
        notice = f"Replies to {domain} now go to {target}."
    return _redirect("/account?notice=" + urllib.parse.quote(notice), 303)


@blueprint.post("/account/category")
async def set_category() -> tuple[str, int] | str | Response:
    form = await _form()
    found = await _own_domain(str(form.get("domain", "")))
    if found is None:
        return await _not_found()
    _, row = found
    try:
        category = parse_category(str(form.get("category", "")))
    except RelayError as exc:
        return await _page("error.html", title="Category not changed", message=str(exc)), 400
    await _svc().store.set_default_category(row.domain, category)
    return _redirect("/account?notice=" + urllib.parse.quote(
        f"Mail from {row.domain} without X-Atmos-Category is now {category or 'bulk'}."), 303)


@blueprint.post("/account/suppressions/remove")
async def remove_suppression() -> Response:
    form = await _form()
    session = await _member_session()
    if session is None or session.did is None:
        return _to_enroll()
    recipient = str(form.get("recipient", ""))
    removed = await _svc().store.remove_suppression(session.did, recipient)
    notice = f"{recipient} removed from your suppression list." if removed else f"{recipient} was not on the list."
    return _redirect("/account?notice=" + urllib.parse.quote(notice), 303)


@blueprint.get("/account/messages/<int:message_id>")
async def message_page(message_id: int) -> tuple[str, int] | str | Response:
    session = await _member_session()
    if session is None:
        return _to_enroll()
    svc = _svc()
    row = await svc.store.get_message(message_id)
    if row is None or row.did != session.did:
        return await _not_found()
    return await _page("message.html", message=row, attempts=await svc.store.attempts_for(message_id))


async def _not_found() -> tuple[str, int]:
    return await _page("error.html", title="Not found", message="There is nothing here for your account."), 404


def fmt_time(value: float | None) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


blueprint.add_app_template_filter(fmt_time, "time")
