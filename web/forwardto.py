"""Forward-to confirmation links (relay.members.forwardto): GET shows a confirm button, its POST confirms."""

from __future__ import annotations

import time

from quart import Blueprint, render_template, request

from relay.app.services import Services
from relay.errors import RateLimited
from relay.members.forwardto import read_token, request_confirmation
from relay.store.rows import Domain
from web.api import services

blueprint = Blueprint("forwardto", __name__)


@blueprint.get("/forward-to/confirm/<token>")
async def show(token: str) -> tuple[str, int]:
    found = read_token(services().cfg.secret_key, token, time.time())
    if found is None:
        return await render_template("forward_confirm.html", state="invalid"), 404
    return await render_template("forward_confirm.html", state="confirm", domain=found[0], forward_to=found[1]), 200


@blueprint.post("/forward-to/confirm/<token>")
async def confirm(token: str) -> tuple[str, int]:
    svc = services()
    found = read_token(svc.cfg.secret_key, token, time.time())
    if found is None:
        return await render_template("forward_confirm.html", state="invalid"), 404
    domain, forward_to = found
    row = await svc.store.call(lambda s: s.confirm_forward_to(domain, forward_to, time.time()))
    state = "done" if row is not None else "changed"
    return await render_template("forward_confirm.html", state=state, domain=domain, forward_to=forward_to), 200


async def after_change(svc: Services, row: Domain) -> bool:
    """After a forward-to change: mail the confirmation link unless the target is already confirmed,
    at most ``inbound.forward_confirm_daily`` a day per member (the relay mails an address the member
    chose: never a way to flood someone's mailbox)."""
    if not row.forward_to or row.forward_confirmed_at is not None:
        return False
    day, cap = int(time.time() // 86400), svc.cfg.inbound.forward_confirm_daily
    if not await svc.store.call(lambda s: s.take_daily("forward-confirm", row.did, day, cap)):
        raise RateLimited(f"forward_to: at most {cap} confirmation mails a day; try again tomorrow")
    public_url = svc.cfg.public_url
    if public_url.endswith(":0"):  # bound to port 0 (tests): the links must name the real port
        public_url = request.host_url.rstrip("/")
    await request_confirmation(svc.cfg, svc.acceptor, row.domain, row.forward_to, now=time.time(),
                               public_url=public_url)
    return True


__all__ = ["after_change", "blueprint"]
