"""One end-to-end sign-in in headless Chromium: /enroll -> the PDS's sign-in and consent pages -> the
relay's callback -> enroll a domain -> /account. Debian ``chromium`` driven by pip ``playwright`` (never
``playwright install``); ``--host-resolver-rules`` lets the browser resolve only loopback names.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.localpds.fixture import PROBE_HOST, LocalPds
from tests.pages.conftest import PublicRelay
from tests.peers.require import INSTALL_HINT, missing, require_module

CHROMIUM = "/usr/bin/chromium"


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        missing(f"the browser test needs {CHROMIUM}: {INSTALL_HINT} (Debian package chromium)")
    require_module("playwright.sync_api", "it drives Debian's chromium")


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("ATMOS_SCREENSHOT_DIR", "") or tmp_path / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_sign_in_enroll_and_account_in_chromium(public_relay: PublicRelay, local_pds: LocalPds,
                                                screenshot_dir: Path) -> None:
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    rules = f"MAP {PROBE_HOST} 127.0.0.1, MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", f"--host-resolver-rules={rules}"])
        try:
            context = browser.new_context(ignore_https_errors=True)  # the relay's test cert is from a test CA
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.goto(public_relay.public_url + "/enroll")
            page.screenshot(path=str(screenshot_dir / "enroll-handle.png"), full_page=True)
            page.get_by_label("Handle").fill(local_pds.handle)
            page.get_by_role("button", name="Continue").click()

            # the PDS's own pages
            page.wait_for_url(f"{local_pds.pds_url}/oauth/authorize**")
            page.locator("input[type=password]").fill(local_pds.password)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("button", name="Authorize").click()

            # back at the relay, signed in
            page.wait_for_url(public_relay.public_url + "/enroll")
            expect(page.get_by_text(local_pds.did).first).to_be_visible()
            page.get_by_label("Domain you send from").fill("mail.example.org")
            page.get_by_role("button", name="Continue").click()
            page.wait_for_url(public_relay.public_url + "/enroll/domain/mail.example.org")
            expect(page.get_by_text("_atmos-challenge.mail.example.org").first).to_be_visible()
            page.screenshot(path=str(screenshot_dir / "enroll-domain.png"), full_page=True)

            page.goto(public_relay.public_url + "/account")
            expect(page.locator("#did")).to_have_text(local_pds.did)
            expect(page.get_by_role("heading", name="mail.example.org")).to_be_visible()
            page.screenshot(path=str(screenshot_dir / "account.png"), full_page=True)
            cookies = {c["name"]: c for c in context.cookies()}
            session = cookies["atmos_session"]
            assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Lax"
        finally:
            browser.close()
    for name in ("enroll-handle.png", "enroll-domain.png", "account.png"):
        assert (screenshot_dir / name).stat().st_size > 1000
