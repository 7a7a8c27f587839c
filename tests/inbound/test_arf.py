"""ARF complaints (RFC 5965) built with the stdlib email package, parsed and sent to the FBL address."""

from __future__ import annotations

import email.message
import email.policy
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.inbound.arf import ArfParseError, is_arf, parse_arf
from relay.inbound.handler import NOT_COMPLAINTS
from tests.inbound.conftest import DID, OPERATOR, OPERATOR_INBOX, OTHER_DID, Rig, RigFactory

FBL = f"fbl@{OPERATOR}"


def reported_message(did: str | None, *, return_path: str | None = None, to: str = "carol@isp.example") -> bytes:
    msg = email.message.EmailMessage()
    if return_path:
        msg["Return-Path"] = f"<{return_path}>"
    msg["From"] = "Alice <alice@member.example>"
    msg["To"] = to
    msg["Subject"] = "Our newsletter"
    msg["Message-ID"] = "<news-42@member.example>"
    if did is not None:
        msg["X-Atmos-Member-Did"] = did
    msg.set_content("Buy our things.\n")
    return msg.as_bytes(policy=email.policy.SMTP)


def arf_report(enclosed: bytes | None, *, feedback_type: str = "abuse", rcpt: str | None = "carol@isp.example",
               headers_only: bool = False, mail_from: str = "alice@member.example") -> bytes:
    """RFC 5965 §2: multipart/report; report-type=feedback-report, three parts."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "ISP Feedback Loop <fbl@isp.example>"
    report["To"] = FBL
    report["Subject"] = "FW: Our newsletter"
    report["Message-ID"] = "<arf-1@isp.example>"
    report.attach(MIMEText("This is an email abuse report for an email message received from IP 192.0.2.1.\n"))
    fields = [f"Feedback-Type: {feedback_type}", "User-Agent: SomeGenerator/1.0", "Version: 1",
              f"Original-Mail-From: <{mail_from}>", "Arrival-Date: Thu, 8 Mar 2024 14:00:00 EST",
              "Source-IP: 192.0.2.1", "Reported-Domain: member.example"]
    if rcpt is not None:
        fields.insert(3, f"Original-Rcpt-To: <{rcpt}>")
    feedback = MIMEBase("message", "feedback-report")
    feedback.set_payload("\r\n".join(fields) + "\r\n")
    report.attach(feedback)
    if enclosed is not None:
        if headers_only:
            part = MIMEBase("text", "rfc822-headers")
            part.set_payload(enclosed.split(b"\r\n\r\n")[0].decode() + "\r\n")
            report.attach(part)
        else:
            report.attach(MIMEMessage(email.message_from_bytes(enclosed, policy=email.policy.SMTP)))
    return report.as_bytes(policy=email.policy.SMTP)


def test_parse_full_report() -> None:
    raw = arf_report(reported_message(DID))
    assert is_arf(raw)
    report = parse_arf(raw)
    assert report.feedback_type == "abuse"
    assert report.original_rcpt_to == ("carol@isp.example",)
    assert report.recipient == "carol@isp.example"
    assert report.member_did == DID
    assert report.message_id == "news-42@member.example"
    assert report.fields["user-agent"] == ["SomeGenerator/1.0"]
    assert report.original_mail_from == "alice@member.example"


def test_parse_headers_only_and_redacted() -> None:
    report = parse_arf(arf_report(reported_message(DID), rcpt=None, headers_only=True))
    assert report.member_did == DID and report.has_enclosed
    assert report.original_rcpt_to == ()
    assert report.recipient == "carol@isp.example"  # from the enclosed To
    bare = parse_arf(arf_report(None, rcpt=None))
    assert bare.member_did is None and bare.recipient is None and not bare.has_enclosed


def test_not_arf() -> None:
    plain = b"From: a@b.example\r\nSubject: hi\r\n\r\nhello\r\n"
    assert not is_arf(plain)
    with pytest.raises(ArfParseError):
        parse_arf(plain)


@settings(max_examples=100)
@given(st.binary(max_size=1500))
def test_parse_never_raises_anything_else(raw: bytes) -> None:
    head = b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n--b\r\n"
    for data in (raw, head + raw):
        try:
            parse_arf(data)
        except ArfParseError:
            pass


@pytest.mark.trio
async def test_complaint_is_recorded_and_complainer_suppressed(rig: Rig) -> None:
    await rig.add_sent(20_000, "carol@isp.example")
    code, _ = await rig.send("", [FBL], arf_report(reported_message(None, return_path=rig.verp(20_000))))
    assert code == 250
    assert rig.events.complaints == [(DID, "carol@isp.example", "abuse", "news-42@member.example")]
    assert await rig.store.is_suppressed(DID, "carol@isp.example")
    assert rig.spooled() == []  # attributed: nothing for the operator inbox


@pytest.mark.trio
async def test_the_verp_recipient_is_the_complainer_whatever_the_report_says(rig: Rig) -> None:
    """Original-Rcpt-To and X-Atmos-Member-Did are the reporter's words; the VERP tag is ours."""
    await rig.add_sent(20_001, "dave@isp.example", did=OTHER_DID)
    raw = arf_report(reported_message(DID, return_path=rig.verp(20_001), to="dave@isp.example"),
                     rcpt="victim@elsewhere.example")
    code, _ = await rig.send("fbl-sender@isp.example", [FBL], raw)
    assert code == 250
    assert rig.events.complaints == [(OTHER_DID, "dave@isp.example", "abuse", "news-42@member.example")]
    assert not await rig.store.is_suppressed(OTHER_DID, "victim@elsewhere.example")
    assert await rig.store.is_suppressed(OTHER_DID, "dave@isp.example")


@pytest.mark.trio
async def test_a_complaint_counts_once_per_message_and_recipient(rig: Rig) -> None:
    await rig.add_sent(20_002, "erin@isp.example")
    raw = arf_report(reported_message(None, return_path=rig.verp(20_002), to="erin@isp.example"))
    for _ in range(3):
        assert (await rig.send("", [FBL], raw))[0] == 250
    assert rig.events.complaints == [(DID, "erin@isp.example", "abuse", "news-42@member.example")]


@pytest.mark.trio
async def test_reports_from_outside_fbl_sources_change_nothing(rig_factory: RigFactory) -> None:
    rig = await rig_factory(fbl_sources=("192.0.2.0/24", "fbl.isp.example"))
    await rig.add_sent(20_003, "carol@isp.example")
    code, _ = await rig.send("", [FBL], arf_report(reported_message(DID, return_path=rig.verp(20_003))))
    assert code == 250
    assert rig.events.complaints == []
    assert not await rig.store.is_suppressed(DID, "carol@isp.example")
    [kept] = await rig.store.call(lambda s: s.list_unattributed())
    assert kept.kind == "arf" and "inbound.fbl_sources" in kept.reason and kept.peer == "127.0.0.1"
    [msg] = rig.spooled()
    assert msg.envelope.rcpts == (OPERATOR_INBOX,)  # the operator still sees it


@pytest.mark.trio
async def test_unattributable_reports_go_to_the_operator(rig: Rig) -> None:
    for raw in (arf_report(reported_message(None)),
                # X-Atmos-Member-Did names a real member: anyone can write that header, it attributes nothing.
                arf_report(reported_message(DID)),
                arf_report(reported_message("did:plc:nosuchmemberaaaaaaaaaaaa")),
                arf_report(None),
                # Names a real member, but the VERP sender it claims does not verify: forged.
                arf_report(reported_message(DID), mail_from="bounces+1-aaaaaaaaaa@relay.test")):
        code, _ = await rig.send("", [FBL], raw)
        assert code == 250
    assert rig.events.complaints == []
    assert not await rig.store.is_suppressed(DID, "carol@isp.example")
    spooled = rig.spooled()
    assert len(spooled) == 5
    assert all(m.envelope.rcpts == (OPERATOR_INBOX,) and m.envelope.mail_from == "" for m in spooled)
    kept = await rig.store.call(lambda s: s.list_unattributed())
    assert len(kept) == 5 and {k.kind for k in kept} == {"arf"}
    assert any("does not verify" in k.reason for k in kept)
    assert any("carries no VERP envelope sender" in k.reason for k in kept)


@pytest.mark.trio
@pytest.mark.parametrize("feedback_type", sorted(NOT_COMPLAINTS))
async def test_non_complaint_feedback_goes_to_the_operator(rig: Rig, feedback_type: str) -> None:
    code, _ = await rig.send("", [FBL], arf_report(reported_message(DID), feedback_type=feedback_type))
    assert code == 250
    assert rig.events.complaints == []
    [msg] = rig.spooled()
    assert msg.envelope.rcpts == (OPERATOR_INBOX,)


@pytest.mark.trio
async def test_plain_mail_to_the_fbl_address_goes_to_the_operator(rig: Rig) -> None:
    code, _ = await rig.send("isp@isp.example", [FBL], b"Subject: please register\r\n\r\nhello\r\n")
    assert code == 250
    [msg] = rig.spooled()
    assert msg.envelope.rcpts == (OPERATOR_INBOX,)
    assert msg.envelope.mail_from.startswith("SRS0=")
