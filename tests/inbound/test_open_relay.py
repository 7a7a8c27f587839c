"""The inbound listener is never an open relay: a battery of relaying tricks over real SMTP (smtplib)."""

from __future__ import annotations

import smtplib
import time

import pytest

from relay.inbound import srs
from tests.inbound.conftest import (
    FORWARD_TO,
    MEMBER_DOMAIN,
    NOFORWARD_DOMAIN,
    OPERATOR,
    OPERATOR_INBOX,
    PENDING_DOMAIN,
    SECRET,
    Rig,
)

# (RCPT TO argument, why it must be refused)
REFUSED = [
    ("victim@evil.example", "plain foreign domain"),
    ("victim@EVIL.example", "foreign domain, other case"),
    (f"victim%evil.example@{OPERATOR}", "percent hack at the operator domain"),
    (f"victim%evil.example@{MEMBER_DOMAIN}", "percent hack at a member domain"),
    (f"evil.example!victim@{OPERATOR}", "UUCP bang path"),
    (f"evil.example!victim@{MEMBER_DOMAIN}", "UUCP bang path at a member domain"),
    (f'"victim@evil.example"@{OPERATOR}', "quoted local part with @"),
    (f'"victim@evil.example"@{MEMBER_DOMAIN}', "quoted local part with @ at a member domain"),
    (f'"victim%evil.example"@{MEMBER_DOMAIN}', "quoted percent hack"),
    (f'"postmaster"@{OPERATOR}', "quoted local part"),
    (f"victim@evil.example@{OPERATOR}", "two @"),
    (f"victim\\@evil.example@{OPERATOR}", "escaped @"),
    (f"@{OPERATOR}:victim@evil.example", "source route through us to a foreign domain"),
    (f"@{OPERATOR},@{MEMBER_DOMAIN}:victim@evil.example", "multi-hop source route"),
    (f"@evil.example:victim@{OPERATOR}", "source route to an unknown local address"),
    (f"victim@{OPERATOR}.", "trailing dot"),
    (f"postmaster@{OPERATOR}.", "trailing dot on postmaster"),
    (f"victim.@{MEMBER_DOMAIN}", "trailing dot in the local part"),
    ("victim@[127.0.0.1]", "IPv4 literal"),
    ("postmaster@[127.0.0.1]", "postmaster at an IP literal"),
    ("victim@[IPv6:::1]", "IPv6 literal"),
    (f"victim@{OPERATOR}.evil.example", "our domain as a prefix of a foreign one"),
    (f"victim@sub.{OPERATOR}", "subdomain of the operator domain"),
    (f"victim@evil-{MEMBER_DOMAIN}", "look-alike of a member domain"),
    (f"victim@sub.{MEMBER_DOMAIN}", "subdomain of a member domain"),
    (f"victim@{OPERATOR}", "unknown address at the operator domain"),
    (f"bounces@{OPERATOR}", "VERP prefix without id"),
    (f"bounces+1-aaaaaaaaaa@{OPERATOR}", "forged VERP tag"),
    (f"bounces+1-aaaaaaaaaa@{NOFORWARD_DOMAIN}", "VERP form at a member domain without forward-to"),
    (f"SRS0=aaaaaa=AB=evil.example=victim@{OPERATOR}", "forged SRS0 address"),
    (f"anyone@{PENDING_DOMAIN}", "domain enrolled but not verified"),
    (f"postmaster@{PENDING_DOMAIN}", "postmaster of an unverified domain"),
    (f"anyone@{NOFORWARD_DOMAIN}", "member domain without forward-to"),
    (f"{FORWARD_TO}", "the member's own forward-to mailbox is not ours"),
    (f"{OPERATOR_INBOX}", "the operator inbox is not ours"),
]


@pytest.mark.trio
@pytest.mark.parametrize(("rcpt", "why"), REFUSED, ids=[w for _, w in REFUSED])
async def test_relaying_tricks_are_refused(rig: Rig, rcpt: str, why: str) -> None:
    code, text = await rig.rcpt(rcpt)
    assert 500 <= code < 600, f"{why}: {rcpt} got {code} {text}"
    assert rig.spooled() == []


@pytest.mark.trio
async def test_refusal_replies(rig: Rig) -> None:
    assert await rig.rcpt("victim@evil.example") == (554, "5.7.1 relay access denied")
    assert await rig.rcpt(f"victim%evil.example@{OPERATOR}") == (554, "5.7.1 relay access denied")
    assert await rig.rcpt(f"nobody@{OPERATOR}") == (550, "5.1.1 address not available")
    assert await rig.rcpt(f"anyone@{NOFORWARD_DOMAIN}") == (550, "5.1.1 address not available")
    assert await rig.rcpt(f"bounces+1-aaaaaaaaaa@{OPERATOR}") == (550, "5.1.1 address not available")


@pytest.mark.trio
async def test_unauthenticated_relaying_with_a_member_sender_is_refused(rig: Rig) -> None:
    for sender in (f"alice@{MEMBER_DOMAIN}", f"postmaster@{OPERATOR}", "", FORWARD_TO):
        code, _ = await rig.rcpt("victim@evil.example", mail_from=sender)
        assert code == 554


@pytest.mark.trio
async def test_whole_transaction_to_a_foreign_domain_never_spools(rig: Rig) -> None:
    code, _ = await rig.send("spammer@evil.example", ["victim@evil.example"], b"Subject: buy\r\n\r\nnow\r\n")
    assert code == 554
    def data_without_rcpt(client: smtplib.SMTP) -> int:
        client.docmd("MAIL", "FROM:<spammer@evil.example>")
        client.docmd("RCPT", "TO:<victim@evil.example>")
        code, _ = client.docmd("DATA")
        return code
    assert await rig.smtp(data_without_rcpt) == 503  # no valid recipient: DATA out of sequence
    assert rig.spooled() == []


@pytest.mark.trio
async def test_srs_address_takes_bounces_only(rig: Rig) -> None:
    address = srs.forward("bob@sender.example", secret=SECRET, domain=OPERATOR)
    assert address is not None
    assert (await rig.rcpt(address, mail_from="spammer@evil.example"))[0] == 550
    assert (await rig.rcpt(address, mail_from=""))[0] == 250


@pytest.mark.trio
async def test_expired_srs_address_is_refused(rig: Rig) -> None:
    old = srs.forward("bob@sender.example", secret=SECRET, domain=OPERATOR, now=time.time() - 30 * 86400)
    assert old is not None
    assert (await rig.rcpt(old, mail_from=""))[0] == 550


ACCEPTED = [
    "postmaster",
    "PostMaster",
    f"postmaster@{OPERATOR}",
    f"PostMaster@{OPERATOR.upper()}",
    f"abuse@{OPERATOR}",
    f"fbl@{OPERATOR}",
    f"postmaster@{MEMBER_DOMAIN}",
    f"postmaster@{NOFORWARD_DOMAIN}",  # RFC 5321 §4.5.1: even without a forward-to
    f"anything@{MEMBER_DOMAIN}",
    f"Some.Body+tag@{MEMBER_DOMAIN.upper()}",
]


@pytest.mark.trio
@pytest.mark.parametrize("rcpt", ACCEPTED)
async def test_postmaster_and_ours_are_accepted(rig: Rig, rcpt: str) -> None:
    code, text = await rig.rcpt(rcpt)
    assert code == 250, f"{rcpt}: {code} {text}"


@pytest.mark.trio
async def test_postmaster_mail_reaches_the_operator_inbox(rig: Rig) -> None:
    msg = b"From: Bob <bob@sender.example>\r\nSubject: your relay\r\n\r\nhello postmaster\r\n"
    code, _ = await rig.send("bob@sender.example", [f"postmaster@{MEMBER_DOMAIN}", "postmaster"], msg)
    assert code == 250
    [spooled] = rig.spooled()
    env = spooled.envelope
    assert env.rcpts == (OPERATOR_INBOX,)
    assert env.did == f"did:web:{OPERATOR}"
    assert srs.reverse(env.mail_from, secret=SECRET, domain=OPERATOR) == "bob@sender.example"
    assert env.attrs["forward"] == "1"
    data = rig.data(spooled)
    assert data.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.relay.test")
    assert data.endswith(msg)


@pytest.mark.trio
async def test_no_operator_inbox_logs_only(rig_factory: object) -> None:
    rig: Rig = await rig_factory(operator_inbox="")  # type: ignore[operator]
    code, _ = await rig.send("bob@sender.example", [f"abuse@{OPERATOR}"], b"Subject: x\r\n\r\ny\r\n")
    assert code == 250
    assert rig.spooled() == []


@pytest.mark.trio
async def test_no_auth_offered(rig: Rig) -> None:
    def features(client: smtplib.SMTP) -> tuple[bool, bool, int]:
        code, _ = client.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA==")
        return client.has_extn("auth"), client.has_extn("starttls"), code
    has_auth, has_tls, code = await rig.smtp(features)
    assert not has_auth and not has_tls
    assert code == 502


# ---- forwarding and SRS: the relay paths a stranger could try to turn into an open relay ----------------

SPAM = b"From: ceo@bank.example\r\nTo: you@mailbox.example\r\nSubject: urgent wire\r\n\r\npay now\r\n"
DSN = (b"From: MAILER-DAEMON@mailbox.example\r\nSubject: Undelivered\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
       b"--b\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
       b"Reporting-MTA: dns; mailbox.example\r\n\r\nFinal-Recipient: rfc822; a@b.example\r\nAction: failed\r\n"
       b"Status: 5.1.1\r\n\r\n--b--\r\n")


@pytest.mark.trio
async def test_forwarding_to_an_unconfirmed_forward_to_is_refused(rig: Rig) -> None:
    """A member points forward_to at a victim: nothing reaches the victim until the victim confirms."""
    await rig.store.set_forward_to(MEMBER_DOMAIN, "victim@elsewhere.example")
    assert await rig.send("spammer@evil.example", [f"x@{MEMBER_DOMAIN}"], SPAM) == (
        550, "5.1.1 address not available")
    assert rig.spooled() == []


@pytest.mark.trio
async def test_a_suspended_members_domain_forwards_nothing(rig: Rig) -> None:
    from tests.inbound.conftest import DID

    await rig.store.set_member_status(DID, "suspended", "automatic: complaints")
    assert await rig.rcpt(f"x@{MEMBER_DOMAIN}") == (550, "5.1.1 address not available")
    assert rig.spooled() == []


@pytest.mark.trio
async def test_forwarding_is_capped_per_member_and_per_source(rig_factory: object) -> None:
    rig: Rig = await rig_factory(forward_daily=3, forward_per_ip_per_hour=1000)  # type: ignore[operator]
    codes = [(await rig.send("spammer@evil.example", [f"x{i}@{MEMBER_DOMAIN}"], SPAM))[0] for i in range(5)]
    assert codes == [250, 250, 250, 451, 451]
    assert len(rig.spooled()) == 3
    rig = await rig_factory(forward_per_ip_per_hour=2)  # type: ignore[operator]
    codes = [(await rig.send("spammer@evil.example", [f"x@{MEMBER_DOMAIN}"], SPAM))[0] for _ in range(4)]
    assert codes == [250, 250, 451, 451]


@pytest.mark.trio
async def test_harvested_srs_address_relays_no_content(rig: Rig) -> None:
    """A valid SRS0 address (seen in any forwarded message) names an address anyone would like to reach."""
    address = srs.forward("victim@bank.example", secret=SECRET, domain=OPERATOR)
    assert address is not None
    # A sender: refused at RCPT. The null sender with ordinary content: refused after DATA.
    assert (await rig.rcpt(address, mail_from="spammer@evil.example"))[0] == 550
    assert await rig.send("", [address], SPAM) == (550, "5.7.1 this address accepts delivery status notifications only")
    # Content dressed up as a bounce but not a delivery report (RFC 3464): still refused.
    fake = b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n--b--\r\n"
    assert (await rig.send("", [address], fake))[0] == 550
    assert rig.spooled() == []
    # A real delivery report goes back, a few a day per address at most (inbound.srs_daily = 5).
    codes = [(await rig.send("", [address], DSN))[0] for _ in range(7)]
    assert codes == [250] * 5 + [451] * 2
    assert all(m.envelope.rcpts == ("victim@bank.example",) and m.envelope.mail_from == "" for m in rig.spooled())


@pytest.mark.trio
async def test_srs_next_to_other_recipients_never_carries_content(rig: Rig) -> None:
    """Mixing an SRS0 address with an accepted recipient does not smuggle content through it."""
    address = srs.forward("victim@bank.example", secret=SECRET, domain=OPERATOR)
    assert address is not None
    code, _ = await rig.send("", [address, f"postmaster@{OPERATOR}"], SPAM)
    assert code == 250
    assert [m.envelope.rcpts for m in rig.spooled()] == [(OPERATOR_INBOX,)]


@pytest.mark.trio
async def test_bounces_pass_only_to_a_confirmed_forward_to(rig: Rig) -> None:
    """Anyone who received a member's mail knows its VERP address and can 'bounce' any content to it."""
    await rig.add_sent(30_001, "accomplice@evil.example")
    await rig.store.set_forward_to(MEMBER_DOMAIN, "victim@elsewhere.example")  # unconfirmed
    vacation = b"From: a@evil.example\r\nSubject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\nbuy\r\n"
    assert (await rig.send("", [rig.verp(30_001)], vacation))[0] == 250
    assert rig.spooled() == []
