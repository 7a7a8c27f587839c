"""Replies to member domains forwarded with SRS, end to end into a real spool and store; SRS bounces back."""

from __future__ import annotations

import smtplib

import pytest
import trio
import trustme

from relay.inbound import srs
from relay.inbound.handler import FORWARD_MARK, InboundHandler
from relay.inbound.service import make_inbound_server
from tests.inbound.conftest import (
    DID,
    FORWARD_TO,
    MEMBER_DOMAIN,
    NOFORWARD_DOMAIN,
    OPERATOR,
    SECRET,
    Rig,
    RigFactory,
    make_config,
)
from tests.smtp.server_support import tls_contexts

REPLY = (
    b"From: Bob <bob@sender.example>\r\n"
    b"To: Alice <alice@member.example>\r\n"
    b"Subject: Re: quarterly numbers\r\n"
    b"Message-ID: <reply-1@sender.example>\r\n"
    b"\r\n"
    b"Thanks!\r\n"
)


@pytest.mark.trio
async def test_reply_is_spooled_for_forward_to_with_an_srs_sender(rig: Rig) -> None:
    code, text = await rig.send("bob@sender.example", [f"anything@{MEMBER_DOMAIN}"], REPLY)
    assert code == 250 and text.startswith("2.0.0 queued as ")
    [msg] = rig.spooled()
    env = msg.envelope
    assert env.rcpts == (FORWARD_TO,)
    assert env.did == DID
    local, _, domain = env.mail_from.rpartition("@")
    assert domain == OPERATOR and local.startswith("SRS0=") and local.endswith("=sender.example=bob")
    assert srs.reverse(env.mail_from, secret=SECRET, domain=OPERATOR) == "bob@sender.example"
    assert env.attrs["source"] == "smtp" and env.attrs["forward"] == "1"
    assert env.attrs["subject"] == "Re: quarterly numbers"
    assert env.attrs["original_mail_from"] == "bob@sender.example"
    data = rig.data(msg)
    assert data.endswith(REPLY)  # the original bytes, untouched (DKIM signatures survive)
    trace = data[: -len(REPLY)].decode()
    assert trace.startswith("Received: from client.test ([127.0.0.1])\r\n\tby mx.relay.test (Atmosphere Relay)")
    assert f"with ESMTP for <anything@{MEMBER_DOMAIN}>;" in trace
    assert f"{FORWARD_MARK}: <anything@{MEMBER_DOMAIN}>\r\n" in trace
    # The store row the accept path wrote (through the batched writer).
    await rig.writer.flush()
    [rid] = msg.rcpt_ids
    row = await rig.store.get_message(rid)
    assert row is not None
    assert (row.did, row.recipient, row.mail_from, row.status) == (DID, FORWARD_TO, env.mail_from, "accepted")


@pytest.mark.trio
async def test_one_copy_for_several_addresses_of_one_domain(rig: Rig) -> None:
    rcpts = [f"a@{MEMBER_DOMAIN}", f"b@{MEMBER_DOMAIN}", f"a@{MEMBER_DOMAIN}"]
    code, _ = await rig.send("bob@sender.example", rcpts, REPLY)
    assert code == 250
    [msg] = rig.spooled()
    assert msg.envelope.rcpts == (FORWARD_TO,)
    assert msg.envelope.attrs["forward_for"] == f"a@{MEMBER_DOMAIN},b@{MEMBER_DOMAIN}"


@pytest.mark.trio
async def test_null_and_unrewritable_senders_forward_with_null_reverse_path(rig: Rig) -> None:
    long_sender = "a.very.long.local.part.for.testing@a-rather-long-subdomain.sender.example"
    for sender in ("", long_sender):
        code, _ = await rig.send(sender, [f"x@{MEMBER_DOMAIN}"], REPLY)
        assert code == 250
    assert [m.envelope.mail_from for m in rig.spooled()] == ["", ""]


@pytest.mark.trio
async def test_unknown_and_no_forward_to_are_refused(rig: Rig) -> None:
    for rcpt in (f"x@{NOFORWARD_DOMAIN}", f"nobody@{OPERATOR}"):
        assert await rig.send("bob@sender.example", [rcpt], REPLY) == (550, "5.1.1 address not available")
    assert await rig.send("bob@sender.example", ["x@unknown.example"], REPLY) == (554, "5.7.1 relay access denied")
    assert rig.spooled() == []


@pytest.mark.trio
async def test_mixed_recipients_keep_only_the_accepted(rig: Rig) -> None:
    def fn(client: smtplib.SMTP) -> tuple[int, list[int]]:
        client.docmd("MAIL", "FROM:<bob@sender.example>")
        codes = [client.docmd("RCPT", f"TO:<{r}>")[0]
                 for r in (f"x@{MEMBER_DOMAIN}", "victim@evil.example", f"x@{NOFORWARD_DOMAIN}")]
        code, _ = client.data(REPLY)
        return code, codes

    code, codes = await rig.smtp(fn)
    assert (code, codes) == (250, [250, 554, 550])
    [msg] = rig.spooled()
    assert msg.envelope.rcpts == (FORWARD_TO,)


@pytest.mark.trio
async def test_forwarding_loops_are_cut(rig: Rig) -> None:
    looped = b"".join(f"{FORWARD_MARK}: <x@{MEMBER_DOMAIN}>\r\n".encode() for _ in range(3)) + REPLY
    assert await rig.send("bob@sender.example", [f"x@{MEMBER_DOMAIN}"], looped) == (
        554, "5.4.6 mail forwarding loop detected")
    hops = b"".join(b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n" for _ in range(51)) + REPLY
    assert (await rig.send("bob@sender.example", [f"x@{MEMBER_DOMAIN}"], hops))[0] == 554
    assert rig.spooled() == []


@pytest.mark.trio
async def test_bounce_to_an_srs_address_goes_back_to_the_original_sender(rig: Rig) -> None:
    await rig.send("bob@sender.example", [f"anything@{MEMBER_DOMAIN}"], REPLY)
    [forwarded] = rig.spooled()
    srs_address = forwarded.envelope.mail_from
    not_a_report = b"From: MAILER-DAEMON@mailbox.example\r\nSubject: Undelivered Mail\r\n\r\n550 5.1.1 gone\r\n"
    assert await rig.send("", [srs_address], not_a_report) == (
        550, "5.7.1 this address accepts delivery status notifications only")
    bounce = dsn_report()
    code, _ = await rig.send("", [srs_address], bounce)
    assert code == 250
    [_, returned] = rig.spooled()
    assert returned.envelope.rcpts == ("bob@sender.example",)
    assert returned.envelope.mail_from == ""
    assert returned.envelope.did == f"did:web:{OPERATOR}"
    assert returned.envelope.attrs["dsn"] == "1"
    assert rig.data(returned).endswith(bounce)
    assert rig.events.bounces == []


def dsn_report() -> bytes:
    """A minimal RFC 3464 delivery report (multipart/report; report-type=delivery-status)."""
    return (b"From: MAILER-DAEMON@mailbox.example\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
            b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mailbox.example\r\n\r\n"
            b"Final-Recipient: rfc822; owner@mailbox.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            b"\r\n--b--\r\n")


@pytest.mark.trio
async def test_srs_address_relays_a_few_reports_a_day_only(rig_factory: RigFactory) -> None:
    rig = await rig_factory(srs_daily=2)
    await rig.send("bob@sender.example", [f"anything@{MEMBER_DOMAIN}"], REPLY)
    [forwarded] = rig.spooled()
    srs_address = forwarded.envelope.mail_from
    assert [(await rig.send("", [srs_address], dsn_report()))[0] for _ in range(3)] == [250, 250, 451]
    assert len(rig.spooled()) == 3  # the forward and two returned reports
    assert await rig.rcpt(srs_address, mail_from="bob@sender.example") == (
        550, "5.7.1 this address accepts delivery status notifications only")


@pytest.mark.trio
async def test_unconfirmed_forward_to_and_suspended_members_forward_nothing(rig: Rig) -> None:
    await rig.store.set_forward_to(MEMBER_DOMAIN, "new-target@mailbox.example")  # a new target: unconfirmed
    assert await rig.send("bob@sender.example", [f"x@{MEMBER_DOMAIN}"], REPLY) == (550, "5.1.1 address not available")
    await rig.store.call(lambda s: s.confirm_forward_to(MEMBER_DOMAIN, "new-target@mailbox.example", 1.0))
    assert (await rig.send("bob@sender.example", [f"x@{MEMBER_DOMAIN}"], REPLY))[0] == 250
    await rig.store.set_member_status(DID, "suspended", "automatic: test")
    assert await rig.send("bob@sender.example", [f"x@{MEMBER_DOMAIN}"], REPLY) == (550, "5.1.1 address not available")
    assert len(rig.spooled()) == 1


@pytest.mark.trio
async def test_forwards_are_capped_per_member_and_per_source(rig_factory: RigFactory) -> None:
    rig = await rig_factory(forward_daily=2)
    codes = [(await rig.send("bob@sender.example", [f"x@{MEMBER_DOMAIN}"], REPLY))[0] for _ in range(3)]
    assert codes == [250, 250, 451]
    assert len(rig.spooled()) == 2
    rig = await rig_factory(forward_per_ip_per_hour=2)
    codes = [(await rig.send("bob@sender.example", [f"x@{MEMBER_DOMAIN}"], REPLY))[0] for _ in range(3)]
    assert codes == [250, 250, 451]


@pytest.mark.trio
async def test_starttls_offered_with_a_context(rig: Rig) -> None:
    server_ctx, client_ctx = tls_contexts(trustme.CA())
    cfg = make_config()
    handler = InboundHandler(cfg, rig.store, rig.acceptor, rig.events)
    server = make_inbound_server(cfg, handler, ssl_context=server_ctx, host="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        [(host, port), *_] = await nursery.start(server.serve)

        def session() -> tuple[bool, bool, int]:
            with smtplib.SMTP(host, port, local_hostname="client.test", timeout=10) as client:
                client.ehlo()
                offered = client.has_extn("starttls")
                client.starttls(context=client_ctx)
                client.ehlo()
                client.docmd("MAIL", "FROM:<bob@sender.example>")
                client.docmd("RCPT", f"TO:<x@{MEMBER_DOMAIN}>")
                data_code, _ = client.data(REPLY)
                return offered, client.has_extn("auth"), data_code

        offered, auth, code = await trio.to_thread.run_sync(session)
        await server.shutdown(1)
    assert offered and not auth and code == 250
    msg = next(m for m in rig.spooled() if m.envelope.rcpts == (FORWARD_TO,))
    assert b"with ESMTPS for" in rig.data(msg)


@pytest.mark.trio
async def test_size_limit(rig_factory: object) -> None:
    rig: Rig = await rig_factory(message_size=1000)  # type: ignore[operator]

    def fn(client: smtplib.SMTP) -> tuple[int, int]:
        mail, _ = client.docmd("MAIL", "FROM:<bob@sender.example> SIZE=5000")
        client.rset()
        client.docmd("MAIL", "FROM:<bob@sender.example>")
        client.docmd("RCPT", f"TO:<x@{MEMBER_DOMAIN}>")
        try:
            code, _ = client.data(REPLY + b"x" * 2000 + b"\r\n")
        except smtplib.SMTPDataError as exc:
            code = exc.smtp_code
        return mail, code

    assert await rig.smtp(fn) == (552, 552)
    assert rig.spooled() == []


@pytest.mark.trio
async def test_all_copies_of_one_message_commit_in_one_batch(rig: Rig) -> None:
    """Issue 14: copies were spooled one by one, so an error after the first made the sender retry
    and duplicated the ones already spooled. One batch is all of them or none."""
    before = rig.spool.stats().commits
    code, text = await rig.send("bob@sender.example", [f"anything@{MEMBER_DOMAIN}", f"postmaster@{OPERATOR}"], REPLY)
    assert code == 250
    spooled = rig.spooled()
    assert {m.envelope.rcpts for m in spooled} == {(FORWARD_TO,), (rig.cfg.inbound.operator_inbox,)}
    assert rig.spool.stats().commits == before + 1
    assert text == "2.0.0 queued as " + ",".join(str(m.queue_id) for m in spooled)
