"""The member endpoints and the /v1/send rate limit through the Quart test client (every error code)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from quart.typing import TestClientProtocol as QuartClient

import web.api
from relay.accept.acceptor import Acceptor
from relay.app.services import Services
from relay.config import Config, LimitsConfig
from relay.members.apikey import ApiKeyCache, hash_api_key
from relay.members.auth import Authenticator
from relay.reputation import Reputation
from relay.reputation.policy import DAY
from relay.store.aio import AsyncStore
from relay.store.mirror import StatusMirror
from relay.store.sqlite import SqliteStore
from relay.store.writer import StatusWriter
from spool import Spool
from tests.reputation.conftest import DID, DID_B, DOMAIN, DOMAIN_2, DOMAIN_B, enroll
from web.app import create_app

KEY = "atmos_" + "k" * 43
KEY_B = "atmos_" + "b" * 43


@dataclass
class Env:
    client: QuartClient
    store: SqliteStore
    rep: Reputation
    services: Services


@pytest.fixture
def sync_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore.open(str(tmp_path / "relay.db"))  # real time: the domains are verified now, day 0
    enroll(store, DID, DOMAIN, DOMAIN_2, handle="alice.example.com")
    enroll(store, DID_B, DOMAIN_B)
    store.set_api_key_hash(DID, hash_api_key(KEY, cost=4))
    store.set_api_key_hash(DID_B, hash_api_key(KEY_B, cost=4))
    yield store
    store.close()


@pytest.fixture
async def env(sync_store: SqliteStore, tmp_path: Path) -> AsyncIterator[Env]:
    store = AsyncStore(sync_store)
    async with trio.open_nursery() as nursery:
        writer = StatusWriter(store)
        await nursery.start(writer.run)
        spool = Spool(tmp_path / "spool", mirror=StatusMirror(writer))
        await nursery.start(spool.run)
        limits = LimitsConfig(warming_tiers=((0, 3, 5),))
        cfg = Config(limits=limits)
        rep = Reputation(store, limits, cfg.suspension)
        await nursery.start(rep.run)
        keys = ApiKeyCache()
        svc = Services(cfg=cfg, store=store, spool=spool, writer=writer, keys=keys,
                          auth=Authenticator(store, keys), acceptor=Acceptor(spool, writer), reputation=rep)
        yield Env(create_app(svc).test_client(), sync_store, rep, svc)
        nursery.cancel_scope.cancel()


def auth(key: str = KEY, did: str | None = DID) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if did is not None:
        headers["X-Atmos-DID"] = did
    return headers


async def answer(resp: Any) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = await resp.get_json()
    return resp.status_code, body


@pytest.mark.trio
async def test_status(env: Env) -> None:
    env.rep.consume(DID, DOMAIN, 2)
    env.rep.sent(DID, DOMAIN, 1)
    env.rep.bounced(DID, DOMAIN_2, 2, "x@dest.example", "hard", "550")
    status, body = await answer(await env.client.get("/member/status", query_string={"did": DID},
                                                     headers=auth(did=None)))
    assert status == 200, body
    assert (body["did"], body["handle"], body["status"], body["suspensionReason"]) == \
        (DID, "alice.example.com", "active", None)
    assert body["totals"] == {"accepted": 2, "sent": 1, "bounced": 1, "complaints": 0, "deferred": 0}
    assert body["labels"] == []
    assert body["standing"]["sends"] == 2 and body["standing"]["bounces"] == 1
    first, second = body["domains"]
    assert (first["domain"], first["state"], first["dkimState"]) == (DOMAIN, "verified", "unverified")
    warming = first["warming"]
    assert (warming["day"], warming["tier"], warming["warmed"], warming["tierEndsDay"]) == (0, 1, False, 7)
    assert {k: warming["hourly"][k] for k in ("limit", "used", "remaining", "scope")} == \
        {"limit": 3, "used": 2, "remaining": 1, "scope": "domain"}
    assert warming["hourly"]["resetAt"] == (int(time.time()) // 3600 + 1) * 3600
    assert (warming["daily"]["limit"], warming["daily"]["remaining"]) == (5, 3)
    assert second["domain"] == DOMAIN_2 and second["warming"]["hourly"]["used"] == 0


@pytest.mark.trio
async def test_deliverability(env: Env) -> None:
    env.rep.sent(DID, DOMAIN, 1)
    env.rep.sent(DID, DOMAIN, 2)
    env.rep.bounced(DID, DOMAIN_2, 3, "x@dest.example", "mailbox-full", "552")
    await env.rep.complaint(DID, "", "abuse", "", domain=DOMAIN)
    env.rep.sent(DID_B, DOMAIN_B, 4)  # someone else's
    status, body = await answer(await env.client.get("/member/deliverability", headers=auth()))
    assert status == 200, body
    assert len(body["days"]) == 14
    assert body["to"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert body["from"] == time.strftime("%Y-%m-%d", time.gmtime(time.time() - 13 * DAY))
    today = body["days"][-1]
    assert today["sent"] == 2 and today["complaints"] == 1
    assert today["bounced"] == {"total": 1, "hard": 0, "soft": 0, "policy": 0, "mailbox-full": 1}
    per_domain = {d["domain"]: d for d in today["domains"]}
    assert per_domain[DOMAIN]["sent"] == 2 and per_domain[DOMAIN_2]["bounced"]["mailbox-full"] == 1
    assert all(d["sent"] == 0 for d in body["days"][:-1])
    assert body["totals"]["sent"] == 2 and [d["domain"] for d in body["domains"]] == [DOMAIN, DOMAIN_2]
    status, body = await answer(await env.client.get("/member/deliverability?days=3", headers=auth()))
    assert status == 200 and len(body["days"]) == 3


@pytest.mark.parametrize(
    ("headers", "query", "status", "code"),
    [
        ({}, {"did": DID}, 400, "AUTH_REQUIRED"),
        ({"Authorization": f"Bearer {KEY}"}, {}, 400, "AUTH_REQUIRED"),
        ({"Authorization": f"Bearer {KEY}"}, {"did": "alice"}, 400, "INVALID_DID"),
        ({"Authorization": "Bearer atmos_wrong"}, {"did": DID}, 401, "AUTH_FAILED"),
        ({"Authorization": f"Bearer {KEY}"}, {"did": DID_B}, 401, "AUTH_FAILED"),  # the key is not B's
        ({"Authorization": f"Bearer {KEY}", "X-Atmos-DID": DID}, {"did": DID_B}, 403, "FORBIDDEN"),
        ({"Authorization": f"Bearer {KEY}"}, {"did": DID, "days": "15"}, 400, "INVALID_REQUEST"),
    ],
)
@pytest.mark.trio
async def test_read_errors(env: Env, headers: dict[str, str], query: dict[str, str], status: int, code: str) -> None:
    for path in ("/member/status", "/member/deliverability"):
        if "days" in query and path == "/member/status":
            continue
        got, body = await answer(await env.client.get(path, headers=headers, query_string=query))
        assert (got, body["code"]) == (status, code), body
        assert body["error"]


@pytest.mark.trio
async def test_suspended_member_reads_its_standing_but_cannot_change_things(env: Env) -> None:
    env.store.set_member_status(DID, "suspended", "automatic: 3 bounces in 24 h of 40 sends (7.5% > 5%)")
    status, body = await answer(await env.client.get("/member/status", headers=auth()))
    assert status == 200 and body["status"] == "suspended"
    assert body["suspensionReason"].startswith("automatic: 3 bounces")
    status, body = await answer(await env.client.put("/member/forward-to", headers=auth(),
                                                     json={"domain": DOMAIN, "forward_to": "me@elsewhere.org"}))
    assert (status, body["code"]) == (403, "MEMBER_SUSPENDED")
    status, body = await answer(await env.client.post("/v1/send", headers=auth(), json={
        "from": f"a@{DOMAIN}", "to": "x@dest.example", "text": "hi"}))
    assert (status, body["code"]) == (403, "MEMBER_SUSPENDED")


@pytest.mark.trio
async def test_forward_to(env: Env) -> None:
    status, body = await answer(await env.client.put("/member/forward-to", headers=auth(),
                                                     json={"domain": "Mail.Example.com", "forward_to": "Me@Elsewhere.org"}))
    assert (status, body) == (200, {"domain": DOMAIN, "forward_to": "Me@elsewhere.org", "confirmed": False,
                                    "confirmation_sent": True})
    row = env.store.get_domain(DOMAIN)
    assert row is not None and row.forward_to == "Me@elsewhere.org" and row.forward_confirmed_at is None
    [confirmation] = [m for m in env.services.spool.live() if m.envelope.rcpts == ("Me@elsewhere.org",)]
    assert b"/forward-to/confirm/" in env.services.spool.read_data(confirmation.queue_id)
    status, body = await answer(await env.client.put("/member/forward-to", headers=auth(),
                                                     json={"domain": DOMAIN, "forward_to": None}))
    assert (status, body) == (200, {"domain": DOMAIN, "forward_to": None, "confirmed": False,
                                    "confirmation_sent": False})
    row = env.store.get_domain(DOMAIN)
    assert row is not None and row.forward_to is None


@pytest.mark.parametrize(
    ("payload", "status", "code", "names"),
    [
        ({"forward_to": "a@b.org"}, 400, "INVALID_REQUEST", "domain:"),
        ({"domain": 5, "forward_to": "a@b.org"}, 400, "INVALID_REQUEST", "domain:"),
        ({"domain": DOMAIN}, 400, "INVALID_REQUEST", "forward_to: required"),
        ({"domain": DOMAIN, "forward_to": "not-an-address"}, 400, "INVALID_REQUEST", "forward_to:"),
        ({"domain": DOMAIN, "forward_to": 7}, 400, "INVALID_REQUEST", "forward_to: must be"),
        ({"domain": DOMAIN, "forward_to": f"me@{DOMAIN}"}, 400, "INVALID_REQUEST", "loop"),
        ({"domain": DOMAIN, "forward_to": "a@b.org", "x": 1}, 400, "INVALID_REQUEST", "unknown field 'x'"),
        (["a"], 400, "INVALID_REQUEST", "JSON object"),
        ({"domain": DOMAIN_B, "forward_to": "a@b.org"}, 403, "DOMAIN_MISMATCH", "domain:"),
        ({"domain": "nobody.example", "forward_to": "a@b.org"}, 403, "DOMAIN_MISMATCH", "nobody.example"),
    ],
)
@pytest.mark.trio
async def test_forward_to_errors(env: Env, payload: Any, status: int, code: str, names: str) -> None:
    got, body = await answer(await env.client.put("/member/forward-to", headers=auth(), json=payload))
    assert (got, body["code"]) == (status, code), body
    assert names in body["error"]


@pytest.mark.trio
async def test_forward_to_bad_json_and_auth(env: Env) -> None:
    got, body = await answer(await env.client.put("/member/forward-to", headers=auth(), data=b"{nope"))
    assert (got, body["code"]) == (400, "INVALID_REQUEST") and "not valid JSON" in body["error"]
    got, body = await answer(await env.client.put("/member/forward-to", headers=auth(key="atmos_nope"),
                                                  json={"domain": DOMAIN, "forward_to": None}))
    assert (got, body["code"]) == (401, "AUTH_FAILED")


@pytest.mark.trio
async def test_without_a_reputation_service(env: Env) -> None:
    client = create_app(dataclasses.replace(env.services, reputation=None)).test_client()
    got, body = await answer(await client.get("/member/status", headers=auth()))
    assert (got, body["code"]) == (503, "SERVICE_UNAVAILABLE")
    resp = await client.post("/v1/send", headers=auth(), json={"from": f"a@{DOMAIN}", "to": "x@dest.example",
                                                                   "text": "hi"})
    assert resp.status_code == 200 and "RateLimit-Limit" not in resp.headers  # no limiter, no limits


@pytest.mark.trio
async def test_send_is_rate_limited_with_headers(env: Env) -> None:
    async def send(to: list[str]) -> Any:
        return await env.client.post("/v1/send", headers=auth(), json={"from": f"a@{DOMAIN}", "to": to, "text": "hi"})

    resp = await send(["a@dest.example", "b@dest.example"])
    assert resp.status_code == 200
    assert (resp.headers["RateLimit-Limit"], resp.headers["RateLimit-Remaining"]) == ("3", "1")
    assert 0 < int(resp.headers["RateLimit-Reset"]) <= 3600
    assert "3;w=3600" in resp.headers["RateLimit-Policy"]
    resp = await send(["c@dest.example", "d@dest.example"])  # 2 more do not fit: nothing is sent
    status, body = await answer(resp)
    assert (status, body["code"]) == (429, "RATE_LIMITED")
    assert "warming limit for mail.example.com (day 0, tier 1): 3 recipients per hour" in body["error"]
    assert body["limit"]["name"] == "domain-hourly" and body["limit"]["limit"] == 3
    retry = int(resp.headers["Retry-After"])
    assert 0 < retry <= 3600 and resp.headers["RateLimit-Reset"] == str(retry)
    assert resp.headers["RateLimit-Remaining"] == "1"
    resp = await send(["c@dest.example"])
    assert resp.status_code == 200 and resp.headers["RateLimit-Remaining"] == "0"
    assert (await send(["e@dest.example"])).status_code == 429
    # the other domain warms on its own
    resp = await env.client.post("/v1/send", headers=auth(), json={"from": f"a@{DOMAIN_2}", "to": "z@dest.example",
                                                                   "text": "hi"})
    assert resp.status_code == 200 and resp.headers["RateLimit-Remaining"] == "2"
    status, body = await answer(await env.client.get("/member/status", headers=auth()))
    assert body["totals"]["accepted"] == 4


SEND_BODY = json.dumps({"from": f"a@{DOMAIN}", "to": ["a@dest.example"], "text": "hi"}).encode()
SEND_HASH = hashlib.sha256(SEND_BODY).hexdigest()


async def keyed_send(env: Env, key: str, body: bytes = SEND_BODY) -> Any:
    return await env.client.post("/v1/send", data=body,
                                 headers={**auth(), "Idempotency-Key": key, "Content-Type": "application/json"})


@pytest.fixture
def other_node(sync_store: SqliteStore, tmp_path: Path) -> Iterator[SqliteStore]:
    """A second connection to the same store file: another node of the relay."""
    store = SqliteStore.open(str(tmp_path / "relay.db"))
    yield store
    store.close()


@pytest.mark.trio
async def test_an_idempotency_key_in_progress_on_another_node_is_waited_for_and_replayed(
    env: Env, other_node: SqliteStore
) -> None:
    now = time.time()
    assert other_node.claim_idempotent(DID, "k-1", "node-b", SEND_HASH, now, 30.0, 0.0).state == "mine"

    async def other_node_answers() -> None:
        await trio.sleep(0.2)
        other_node.put_idempotent(DID, "k-1", SEND_HASH, 200, '{"accepted": ["a@dest.example"], "node": "b"}')
        other_node.release_idempotent(DID, "k-1", "node-b")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_node_answers)
        resp = await keyed_send(env, "k-1")
    status, body = await answer(resp)
    assert (status, body["node"]) == (200, "b") and resp.headers["Idempotent-Replayed"] == "true"
    assert env.store.counts_by_status()["accepted"] == 0  # this node sent nothing


@pytest.mark.trio
async def test_an_idempotency_key_still_in_progress_after_the_wait_is_409(
    env: Env, other_node: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web.api, "CLAIM_WAIT", 0.2)
    assert other_node.claim_idempotent(DID, "k-2", "node-b", SEND_HASH, time.time(), 30.0, 0.0).state == "mine"
    resp = await keyed_send(env, "k-2")
    status, body = await answer(resp)
    assert (status, body["code"], resp.headers["Retry-After"]) == (409, "IDEMPOTENCY_KEY_IN_PROGRESS", "1")
    other = json.dumps({"from": f"a@{DOMAIN}", "to": ["b@dest.example"], "text": "hi"}).encode()
    status, body = await answer(await keyed_send(env, "k-2", other))  # another body under that key: at once
    assert (status, body["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert env.store.counts_by_status()["accepted"] == 0


@pytest.mark.trio
async def test_a_keyed_send_releases_its_claim_once_the_answer_is_stored(env: Env, other_node: SqliteStore) -> None:
    status, body = await answer(await keyed_send(env, "k-3"))
    assert status == 200, body
    # another node now finds the stored answer, not a claim
    claim = other_node.claim_idempotent(DID, "k-3", "node-b", SEND_HASH, time.time(), 30.0, 0.0)
    assert claim.state == "stored" and claim.response is not None
    assert json.loads(claim.response.response_json)["accepted"] == body["accepted"]
