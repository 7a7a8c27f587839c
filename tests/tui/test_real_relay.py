"""The console against the REAL relay process (atmos serve on free ports), driven with Textual's Pilot.

A message submitted over HTTP shows up in the queue screen (deferred: test relays route mail to a
closed port), `h` holds it in the relay itself, and lifting a suspension from the members screen makes
the relay accept that member's mail again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.e2e.relayproc import RelayProcess, make_tls
from tests.tui.helpers import run, screen_text, wait_for
from tui.app import ConsoleApp

DID = "did:plc:consoleaaaaaaaaaaaaaaaaa"
DOMAIN = "console.example.net"


def send(relay: RelayProcess, key: str, did: str, domain: str, subject: str) -> httpx.Response:
    return httpx.post(f"{relay.http}/v1/send", headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": did},
                      json={"from": f"a@{domain}", "to": "reader@example.org", "subject": subject, "text": "hi"},
                      timeout=10)


# The websockets client may still hold its socket when asyncio.run() tears the loop down after the
# app exits (the worker is cancelled mid-close); that is the test harness's loop, not a leak in the relay.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_console_drives_the_real_relay(tmp_path: Path) -> None:
    relay = RelayProcess(base=tmp_path / "relay", tls=make_tls(tmp_path / "tls"))
    relay.base.mkdir()
    key = relay.enroll(DID, DOMAIN)["api_key"]
    other = relay.enroll("did:plc:suspendmeaaaaaaaaaaaaaaa", "suspended.example.net")["api_key"]
    relay.admin("members", "suspend", "did:plc:suspendmeaaaaaaaaaaaaaaa", "--reason", "bounce spike")
    relay.start()
    url = relay.http.replace("http://", "ws://") + "/admin/ws"
    token = relay.full_env()["ATMOS_ADMIN_TOKEN"]
    try:
        async def scenario() -> None:
            app = ConsoleApp(url, token)
            async with app.run_test(size=(80, 24), notifications=True) as pilot:
                r = await asyncio.to_thread(send, relay, key, DID, DOMAIN, "console-1")
                assert r.status_code == 200, r.text
                rid = r.json()["accepted"][0]["messageId"]
                await pilot.press("2")  # the queue screen
                await wait_for(pilot, lambda: "reader@example.org" in screen_text(app), within=15,
                               what="the submitted message in the queue screen")
                await wait_for(pilot, lambda: "deferred" in screen_text(app), within=15, what="the deferral")
                await pilot.press("h")
                await wait_for(pilot, lambda: "held" in screen_text(app), within=10, what="the hold")
                shown = await asyncio.to_thread(relay.admin, "queue", "show", str(rid))
                assert shown["queued"]["recipients"][0]["state"] == "held"

                await pilot.press("5")  # members: the suspended one awaits review
                await wait_for(pilot, lambda: "bounce spike" in screen_text(app), within=10, what="the review queue")
                refused = await asyncio.to_thread(send, relay, other, "did:plc:suspendmeaaaaaaaaaaaaaaa",
                                                  "suspended.example.net", "console-2")
                assert refused.status_code == 403
                await pilot.press("u")
                await wait_for(pilot, lambda: "bounce spike" not in screen_text(app), within=10, what="the lift")
                accepted = await asyncio.to_thread(send, relay, other, "did:plc:suspendmeaaaaaaaaaaaaaaa",
                                                   "suspended.example.net", "console-3")
                assert accepted.status_code == 200, accepted.text
            await asyncio.sleep(0.3)  # let the cancelled websocket worker finish its close handshake

        run(scenario(), timeout=90)
    finally:
        relay.stop()
