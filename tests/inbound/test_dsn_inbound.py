"""DSNs arriving at VERP addresses over SMTP: a real Postfix's, our own builder's, forged ones."""

from __future__ import annotations

import email
import email.policy
import smtplib
from pathlib import Path

import pytest
import trio

from relay.delivery.dsn import FailedRecipient, build_dsn
from relay.delivery.sink import CaptureSink
from relay.inbound import srs
from tests.inbound.conftest import DID, FORWARD_TO, NOFORWARD_DOMAIN, OPERATOR, SECRET, Rig
from tests.peers.postfix import BouncingPostfix

ORIGINAL = (
    "From: Alice <alice@member.example>\r\n"
    "To: {rcpt}\r\n"
    "Subject: quarterly numbers\r\n"
    f"X-Atmos-Member-Did: {DID}\r\n"
    "Message-ID: <orig-{rid}@member.example>\r\n"
    "\r\n"
    "body\r\n"
)


def dsn_for(rig: Rig, rid: int, rcpt: str, status: str, diagnostic: str) -> bytes:
    return build_dsn(
        reporting_mta="mx.remote.example",
        original_envelope_from=rig.verp(rid),
        original_headers=ORIGINAL.format(rcpt=rcpt, rid=rid).encode(),
        failed=[FailedRecipient(rcpt, status, "failed", "mx.remote.example", diagnostic)],
        arrival=1_700_000_000.0,
        now=1_700_000_060.0,
        message_id_domain="remote.example",
        from_address="MAILER-DAEMON@remote.example",
    )


@pytest.mark.trio
async def test_our_dsn_is_a_late_bounce(rig: Rig) -> None:
    await rig.add_sent(10_001, "gone@remote.example")
    dsn = dsn_for(rig, 10_001, "gone@remote.example", "5.1.1", "550 5.1.1 <gone@remote.example>: user unknown")
    code, _ = await rig.send("", [rig.verp(10_001)], dsn)
    assert code == 250
    assert rig.events.bounces == [(DID, 10_001, "gone@remote.example", "hard",
                                   "550 5.1.1 <gone@remote.example>: user unknown")]
    row = await rig.store.get_message(10_001)
    assert row is not None and row.status == "bounced"
    assert row.last_reply is not None and row.last_reply.startswith("late bounce (hard): 550 5.1.1")
    # The member-facing copy: the DSN itself, from <>, to the domain's forward-to.
    [fwd] = rig.spooled()
    assert (fwd.envelope.mail_from, fwd.envelope.rcpts, fwd.envelope.did) == ("", (FORWARD_TO,), DID)
    assert fwd.envelope.attrs["dsn"] == "1" and fwd.envelope.attrs["bounce_class"] == "hard"
    assert rig.data(fwd).endswith(dsn)
    # The same DSN again (a retransmission): already recorded, nothing new.
    code, _ = await rig.send("", [rig.verp(10_001)], dsn)
    assert code == 250
    assert len(rig.events.bounces) == 1 and len(rig.spooled()) == 1


@pytest.mark.trio
async def test_classes_and_a_domain_without_forward_to(rig: Rig) -> None:
    cases = [
        (10_011, "5.2.2", "552 5.2.2 mailbox full", "mailbox-full"),
        (10_012, "5.7.1", "550 5.7.1 blocked by policy", "policy"),
        (10_013, "4.4.7", "451 4.4.7 message expired", "soft"),
    ]
    for rid, status, diag, _ in cases:
        await rig.add_sent(rid, f"r{rid}@remote.example", mail_from=f"news@{NOFORWARD_DOMAIN}")
        code, _ = await rig.send("", [rig.verp(rid)], dsn_for(rig, rid, f"r{rid}@remote.example", status, diag))
        assert code == 250
    assert [(b[1], b[3]) for b in rig.events.bounces] == [(rid, klass) for rid, _, _, klass in cases]
    assert rig.spooled() == []  # no forward-to on that domain: logged only


@pytest.mark.trio
async def test_several_verp_recipients_in_one_transaction(rig: Rig) -> None:
    await rig.add_sent(10_021, "a@remote.example")
    await rig.add_sent(10_022, "b@remote.example", status="deferred")
    dsn = dsn_for(rig, 10_021, "a@remote.example", "5.1.1", "550 5.1.1 unknown")
    code, _ = await rig.send("", [rig.verp(10_021), rig.verp(10_022)], dsn)
    assert code == 250
    assert {b[1] for b in rig.events.bounces} == {10_021, 10_022}
    row = await rig.store.get_message(10_022)
    assert row is not None and row.status == "deferred"  # still queued: the spool decides, not a DSN


@pytest.mark.trio
async def test_forged_verp_is_refused_and_nothing_counted(rig: Rig) -> None:
    await rig.add_sent(10_031, "gone@remote.example")
    good = rig.verp(10_031)
    forged = [good.replace("+10031-", "+10032-"), good[:-len(f"@{OPERATOR}") - 1] + "x" + f"@{OPERATOR}"]
    for address in forged:
        code, text = await rig.rcpt(address, mail_from="")
        assert (code, text) == (550, "5.1.1 address not available")
    dsn = dsn_for(rig, 10_031, "gone@remote.example", "5.1.1", "550 5.1.1 unknown")
    code, _ = await rig.send("", [forged[0]], dsn)
    assert code == 550
    assert rig.events.bounces == []
    row = await rig.store.get_message(10_031)
    assert row is not None and row.status == "sent"


@pytest.mark.trio
async def test_unknown_row_and_auto_replies(rig: Rig) -> None:
    # A valid tag for an id the store no longer knows: accepted, kept for the operator, counted nowhere.
    code, _ = await rig.send("", [rig.verp(99_999)], b"Subject: Undelivered Mail\r\n\r\n550 5.1.1 x\r\n")
    assert code == 250
    [kept] = await rig.store.call(lambda s: s.list_unattributed())
    assert kept.kind == "dsn" and "99999" in kept.reason and kept.summary == "Undelivered Mail"
    # An out-of-office reply to the VERP address: passed on to the member, not a bounce.
    await rig.add_sent(10_041, "bob@remote.example")
    vacation = b"From: bob@remote.example\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\naway\r\n"
    code, _ = await rig.send("", [rig.verp(10_041)], vacation)
    assert code == 250
    assert rig.events.bounces == []
    [fwd] = rig.spooled()
    assert fwd.envelope.rcpts == (FORWARD_TO,) and "bounce_class" not in fwd.envelope.attrs
    row = await rig.store.get_message(10_041)
    assert row is not None and row.status == "sent"


@pytest.mark.trio
async def test_bounce_of_a_forwarded_reply_is_not_the_members(rig: Rig) -> None:
    srs_sender = srs.forward("bob@sender.example", secret=SECRET, domain=OPERATOR)
    assert srs_sender is not None
    await rig.add_sent(10_051, FORWARD_TO, mail_from=srs_sender)
    code, _ = await rig.send("", [rig.verp(10_051)], dsn_for(rig, 10_051, FORWARD_TO, "5.1.1", "550 5.1.1 gone"))
    assert code == 250
    assert rig.events.bounces == [] and rig.spooled() == []
    row = await rig.store.get_message(10_051)
    assert row is not None and row.status == "bounced"


@pytest.mark.trio
@pytest.mark.peer
async def test_real_postfix_dsn(rig: Rig, tmp_path: Path) -> None:
    """Postfix relays a message with our VERP envelope sender to a destination that answers
    550 5.1.1 at RCPT; its bounce(8) DSN comes to our inbound listener over SMTP."""
    rid = 10_061
    rcpt = "reject-gone@remote.test"
    await rig.add_sent(rid, rcpt)
    sink = CaptureSink(tmp_path / "sink", hostname="mx.remote.test")  # "reject*" -> 550 5.1.1 user unknown
    async with trio.open_nursery() as nursery:
        _, sink_port = await nursery.start(sink.serve)
        postfix = BouncingPostfix({OPERATOR: rig.port, "remote.test": sink_port})
        try:
            await trio.to_thread.run_sync(postfix.start)

            def submit() -> None:
                with smtplib.SMTP("127.0.0.1", postfix.port, local_hostname="relay.test", timeout=10) as client:
                    client.sendmail(rig.verp(rid), [rcpt], ORIGINAL.format(rcpt=rcpt, rid=rid).encode())

            await trio.to_thread.run_sync(submit)
            try:
                with trio.fail_after(25):  # the member's copy is spooled before the event fires
                    await rig.events.changed.wait()
            except trio.TooSlowError:
                pytest.fail(f"no DSN from Postfix; its log:\n{postfix.maillog()}")
        finally:
            await trio.to_thread.run_sync(postfix.stop)
            await sink.shutdown()
    [(did, got_rid, recipient, klass, diagnostic)] = rig.events.bounces
    assert (did, got_rid, recipient, klass) == (DID, rid, rcpt, "hard")
    assert "550 5.1.1" in diagnostic and "user unknown" in diagnostic
    row = await rig.store.get_message(rid)
    assert row is not None and row.status == "bounced"
    [fwd] = rig.spooled()
    assert (fwd.envelope.mail_from, fwd.envelope.rcpts) == ("", (FORWARD_TO,))
    dsn = email.message_from_bytes(rig.data(fwd), policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert "pfbounce.test" in str(dsn["From"]) or "MAILER-DAEMON" in str(dsn["From"])
    assert sink.messages() == []  # the destination refused it: nothing delivered there
