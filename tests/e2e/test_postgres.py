"""The real ``atmos serve`` and ``atmos admin`` on a PostgreSQL store (store.url = "postgresql://...").

The store suite (tests/store) runs every query on both backends; this checks the wiring around it:
the admin CLI enrolls into PostgreSQL, the server authenticates from it, and an accepted message's
row reaches it through the spool mirror and the batched writer.
"""

from __future__ import annotations

import smtplib
import ssl

import httpx

from relay.store import open_store
from tests.e2e.conftest import DID, DOMAIN, HANDLE, message
from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.peers.postgres import postgres_server, postgres_url  # noqa: F401  (registers the fixtures)


def test_submission_on_a_postgresql_store(
    tmp_path_factory: object, tls_files: TLSFiles, client_ctx: ssl.SSLContext, postgres_url: str  # noqa: F811
) -> None:
    base = tmp_path_factory.mktemp("relay-pg")  # type: ignore[attr-defined]
    relay = RelayProcess(base=base, tls=tls_files, extra_toml=f'[store]\nurl = "{postgres_url}"\n')
    relay.write_config()
    key = relay.enroll(DID, DOMAIN, HANDLE)["api_key"]
    relay.start()
    try:
        s = smtplib.SMTP(*relay.submission, timeout=10)
        s.starttls(context=client_ctx)
        s.login(HANDLE, key)  # the handle, looked up in PostgreSQL
        refused = s.sendmail(f"hello@{DOMAIN}", ["rcpt@example.org"],
                             message(f"hello@{DOMAIN}", "rcpt@example.org", subject="on postgres"))
        s.quit()
        assert refused == {}
        # The HTTP API reads the row back from PostgreSQL (the mirror wrote it through the batched writer).
        sent = httpx.post(f"{relay.http}/v1/send", headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": DID},
                          json={"from": f"hello@{DOMAIN}", "to": ["other@example.org"], "subject": "over http",
                                "text": "hi"})
        assert sent.status_code == 200, sent.text
        message_id = sent.json()["accepted"][0]["messageId"]
        shown = httpx.get(f"{relay.http}/v1/messages/{message_id}",
                          headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": DID})
        assert shown.status_code == 200 and shown.json()["subject"] == "over http", shown.text
    finally:
        relay.stop()
    assert not (relay.state_dir / "relay.db").exists()  # nothing went to a SQLite file beside it
    store = open_store(postgres_url)
    try:
        rows = store.list_messages(did=DID)
        assert sorted((m.recipient, m.subject) for m in rows) == [
            ("other@example.org", "over http"), ("rcpt@example.org", "on postgres")]
        member = store.get_member_by_handle(HANDLE)
        assert member is not None and member.did == DID
    finally:
        store.close()
