"""/admin/ws and POST /admin/api/command against the real relay process, over real sockets.

RelayProcess routes outbound mail to a closed loopback port, so every delivery attempt defers.
"""

from __future__ import annotations

import base64
import json
import os
import re
from urllib.parse import urlsplit

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from relay.events import (
    CommandResult,
    Delivery,
    Heartbeat,
    MemberSuspended,
    MemberUnsuspended,
    MessageAccepted,
    QueueChanged,
    QueueDepth,
    Snapshot,
    Throughput,
)
from tests.events.conftest import DID, DID_B, Relay, Stream


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {token}".encode())]


async def handshake(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """A raw RFC 6455 opening handshake: (HTTP status, body). trio-websocket leaks the socket when a
    handshake is rejected, so the refusals are checked on the wire."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    lines = [f"GET {parts.path}{'?' + parts.query if parts.query else ''} HTTP/1.1",
             f"Host: {parts.hostname}:{parts.port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Version: 13",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        raw = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                raw += chunk
                head, sep, body = raw.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and (length is None or len(body) >= int(length.group(1))):
                    break
    status = int(raw.split(b" ", 2)[1])
    return status, raw.partition(b"\r\n\r\n")[2]


@pytest.mark.trio
@pytest.mark.parametrize(("headers", "query", "code"), [
    ({}, "", "AUTH_REQUIRED"),
    ({"Authorization": "Basic eDp5"}, "", "AUTH_REQUIRED"),
    ({"Authorization": "Bearer wrong-token"}, "", "AUTH_FAILED"),
    ({}, "?token=wrong-token", "AUTH_FAILED"),
    ({}, "?token=", "AUTH_REQUIRED"),
])
async def test_refused_without_the_admin_token(relay: Relay, headers: dict[str, str], query: str, code: str) -> None:
    status, body = await handshake(relay.ws_url + query, headers)
    assert status == 401
    assert json.loads(body)["code"] == code


@pytest.mark.trio
async def test_the_raw_handshake_with_the_token_switches_protocols(relay: Relay) -> None:
    status, _ = await handshake(relay.ws_url, {"Authorization": f"Bearer {relay.admin_token}"})
    assert status == 101


@pytest.mark.trio
async def test_token_in_query_string_accepted(relay: Relay) -> None:
    async with open_websocket_url(f"{relay.ws_url}?token={relay.admin_token}") as ws:
        assert isinstance(await Stream(ws).next(), Snapshot)


@pytest.mark.trio
async def test_snapshot_accepted_delivery_hold_release(relay: Relay) -> None:
    member = relay.members[DID]
    async with open_websocket_url(relay.ws_url, extra_headers=bearer(relay.admin_token)) as ws, \
            httpx.AsyncClient(base_url=relay.http, timeout=10) as http:
        stream = Stream(ws)
        first = await stream.next()
        assert isinstance(first, Snapshot)
        assert set(first.queue_by_state) >= {"accepted", "deferred", "held"}
        # Warming per verified domain, from the reputation service (RelayProcess lifts the warming tiers).
        warming = {w.domain: w for w in first.warming}
        assert warming[member.domain].did == DID and warming[member.domain].tier == "warm"
        assert warming[member.domain].hourly_limit == 1_000_000

        r = await http.post("/v1/send", headers=member.headers(), json=member.send_body(to="bob@dest.example"))
        assert r.status_code == 200, r.text
        rcpt_id = r.json()["accepted"][0]["messageId"]

        accepted = await stream.expect(MessageAccepted, did=DID)
        assert accepted.rcpt_ids == (rcpt_id,) and accepted.source == "http"
        assert accepted.recipients == ("bob@dest.example",) and accepted.sender == f"hello@{member.domain}"
        queue_id = accepted.queue_id

        delivery = await stream.expect(Delivery, rcpt_id=rcpt_id)
        assert delivery.state == "deferred" and delivery.attempts == 1 and delivery.domain == "dest.example"
        assert delivery.next_attempt_at is not None and delivery.reply

        await stream.command("h1", "hold", str(queue_id))
        result = await stream.expect(CommandResult, id="h1")
        assert result.ok, result.message
        changed = await stream.expect(QueueChanged, queue_id=queue_id)
        assert changed.action == "hold" and changed.changed == 1
        shown = (await http.get(f"/admin/api/queue/{queue_id}", headers=relay.admin_headers())).json()
        assert [r["state"] for r in shown["queued"]["recipients"]] == ["held"]
        depth = await stream.expect(QueueDepth)  # published every second while anyone listens
        assert depth.by_state["held"] >= 1 and depth.by_destination.get("dest.example", 0) >= 1
        await stream.expect(Throughput)

        # A fresh client sees the held recipient in its snapshot.
        snap = await http.get("/admin/api/snapshot", headers=relay.admin_headers())
        items = [i for i in snap.json()["data"]["queue"] if i["rcpt_id"] == rcpt_id]
        assert items and items[0]["state"] == "held" and items[0]["did"] == DID

        await stream.command("r1", "release", str(queue_id))
        assert (await stream.expect(CommandResult, id="r1")).ok
        assert (await stream.expect(QueueChanged, queue_id=queue_id, action="release")).changed == 1
        # Released recipients are delivered at once (and defer again: the MX port is closed).
        again = await stream.expect(Delivery, rcpt_id=rcpt_id)
        assert again.attempts == 2

        await stream.command("d1", "delete", str(queue_id))
        assert (await stream.expect(CommandResult, id="d1")).ok
        # Heartbeats flow every 5 s, with the dropped-subscriber count.
        heartbeat = await stream.expect(Heartbeat, within=7)
        assert heartbeat.dropped_subscribers >= 0


@pytest.mark.trio
async def test_suspend_and_unsuspend_from_the_console(relay: Relay) -> None:
    member = relay.members[DID_B]
    async with open_websocket_url(relay.ws_url, extra_headers=bearer(relay.admin_token)) as ws, \
            httpx.AsyncClient(base_url=relay.http, timeout=10) as http:
        stream = Stream(ws)
        assert isinstance(await stream.next(), Snapshot)
        await stream.command("s1", "suspend", DID_B, "complaints from the console")
        result = await stream.expect(CommandResult, id="s1")
        assert result.ok and "complaints from the console" in result.message
        event = await stream.expect(MemberSuspended, did=DID_B)
        assert event.reason == "complaints from the console" and event.automatic is False

        r = await http.post("/v1/send", headers=member.headers(), json=member.send_body())
        assert r.status_code == 403 and r.json()["code"] == "MEMBER_SUSPENDED"

        # A new console sees the member in its review queue.
        async with open_websocket_url(relay.ws_url, extra_headers=bearer(relay.admin_token)) as ws2:
            snap = await Stream(ws2).next()
            assert isinstance(snap, Snapshot)
            [row] = [s for s in snap.suspended if s.did == DID_B]
            assert row.reason == "complaints from the console" and row.since > 0

        await stream.command("u1", "unsuspend", DID_B)
        assert (await stream.expect(CommandResult, id="u1")).ok
        await stream.expect(MemberUnsuspended, did=DID_B)
        r = await http.post("/v1/send", headers=member.headers(), json=member.send_body())
        assert r.status_code == 200, r.text


@pytest.mark.trio
async def test_bad_frames_get_an_error_result_and_the_stream_goes_on(relay: Relay) -> None:
    async with open_websocket_url(relay.ws_url, extra_headers=bearer(relay.admin_token)) as ws:
        stream = Stream(ws)
        assert isinstance(await stream.next(), Snapshot)
        bad = [
            ("not json at all", ""),
            ('{"v": 2, "type": "command", "data": {}}', ""),
            ('{"v": 1, "type": "heartbeat", "data": {}}', ""),
            ('{"v": 1, "type": "what", "data": {}}', ""),
            ('{"v": 1, "type": "command", "data": {"id": "x1"}}', "x1"),
            ('{"v": 1, "type": "command", "data": {"id": "x2", "action": "explode", "target": "1"}}', "x2"),
            ('{"v": 1, "type": "command", "data": {"id": "x3", "action": "hold", "target": "abc"}}', "x3"),
            ('{"v": 1, "type": "command", "data": {"id": "x4", "action": "hold", "target": "999999999"}}', "x4"),
            ('{"v": 1, "type": "command", "data": {"id": "x5", "action": "suspend", "target": "bob"}}', "x5"),
            ('{"v": 1, "type": "command", "data": {"id": "x6", "action": "suspend", '
             '"target": "did:plc:nobodyaaaaaaaaaaaaaaaaa"}}', "x6"),
            ('{"v": 1, "type": "command", "data": {"id": "x7", "action": "pause", "target": "not a domain"}}', "x7"),
            ('{"v": 1, "type": "command", "data": {"id": "x8", "action": "hold", "target": 5}}', "x8"),
        ]
        for text, cmd_id in bad:
            await stream.send_raw(text)
            result = await stream.expect(CommandResult)
            assert (result.id, result.ok) == (cmd_id, False), (text, result)
            assert result.message
        await stream.command("ok1", "pause", "Slow.Example")
        # The pause's QueueChanged and the command's result may come in either order (the result waits
        # until the pause was also left for the relay's other nodes).
        seen: dict[type, object] = {}
        with trio.fail_after(10):
            while len(seen) < 2:
                event = await stream.next()
                if (isinstance(event, CommandResult) and event.id == "ok1") or isinstance(event, QueueChanged):
                    seen[type(event)] = event
        result, changed = seen[CommandResult], seen[QueueChanged]
        assert isinstance(result, CommandResult) and isinstance(changed, QueueChanged)
        assert result.ok and "slow.example" in result.message
        assert changed.action == "pause" and changed.destination == "slow.example" and changed.queue_id == 0
        await stream.command("ok2", "resume", "slow.example")
        assert (await stream.expect(CommandResult, id="ok2")).ok


def test_command_over_http(relay: Relay) -> None:
    url = f"{relay.http}/admin/api/command"
    r = httpx.post(url, json={"action": "pause", "target": "paused.example"})
    assert r.status_code == 400 and r.json()["code"] == "AUTH_REQUIRED"
    r = httpx.post(url, json={"action": "pause", "target": "paused.example"},
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.post(url, json={"id": "p1", "action": "pause", "target": "paused.example"},
                   headers=relay.admin_headers())
    assert r.status_code == 200 and r.json() == {"id": "p1", "ok": True,
                                                 "message": "paused delivery to paused.example"}
    snap = httpx.get(f"{relay.http}/admin/api/snapshot", headers=relay.admin_headers()).json()
    assert snap["type"] == "snapshot" and "paused.example" in snap["data"]["paused_destinations"]
    r = httpx.post(url, json={"action": "resume", "target": "paused.example"}, headers=relay.admin_headers())
    assert r.status_code == 200 and r.json()["ok"] and r.json()["id"] == ""
    r = httpx.post(url, json={"id": "bad", "action": "retry", "target": "12x"}, headers=relay.admin_headers())
    assert r.status_code == 400 and r.json()["ok"] is False and r.json()["id"] == "bad"
    assert "queue id" in r.json()["message"]
    r = httpx.post(url, content=b"[1,2]", headers=relay.admin_headers())
    assert r.status_code == 400 and r.json()["ok"] is False
    snap = httpx.get(f"{relay.http}/admin/api/snapshot", headers=relay.admin_headers()).json()
    assert "paused.example" not in snap["data"]["paused_destinations"]


@pytest.mark.trio
async def test_two_consoles_see_the_same_events(relay: Relay) -> None:
    member = relay.members[DID]
    hdr = bearer(relay.admin_token)
    async with open_websocket_url(relay.ws_url, extra_headers=hdr) as a, \
            open_websocket_url(relay.ws_url, extra_headers=hdr) as b:
        sa, sb = Stream(a), Stream(b)
        assert isinstance(await sa.next(), Snapshot) and isinstance(await sb.next(), Snapshot)
        async with httpx.AsyncClient(base_url=relay.http, timeout=10) as http:
            r = await http.post("/v1/send", headers=member.headers(), json=member.send_body(to="two@dest.example"))
        rcpt_id = r.json()["accepted"][0]["messageId"]
        got_a = await sa.expect(MessageAccepted, recipients=("two@dest.example",))
        got_b = await sb.expect(MessageAccepted, recipients=("two@dest.example",))
        assert got_a == got_b and got_a.rcpt_ids == (rcpt_id,)
    # Both closed by the client: the relay forgets them (the metrics gauge reads 0 soon after).
    async with httpx.AsyncClient(base_url=relay.http, timeout=10) as http:
        for _ in range(50):
            if re.search(r"\natmos_event_subscribers 0(\.0)?\n", (await http.get("/metrics")).text):
                break
            await trio.sleep(0.1)
        else:
            pytest.fail("the relay still counts the closed consoles as subscribers")
