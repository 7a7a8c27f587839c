import email
from email import policy

from relay.mail.outbound import feedback_id, rewrite, split_message

DID = "did:plc:abcdefghijklmnopqrstuvwx"
MSG = (b"From: a@mail.example.com\r\nTo: x@example.org\r\nSubject: a long\r\n subject folded\r\n"
       b"X-Atmos-Member-Did: did:plc:forgedforgedforgedforged\r\nFeedback-ID: forged\r\n"
       b"X-Atmos-Category: newsletter\r\nList-Unsubscribe: <mailto:own@x>\r\n\r\nbody\r\n.line\r\n")


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


def test_split_keeps_folded_fields_together() -> None:
    fields, body = split_message(MSG)
    assert fields[2] == b"Subject: a long\r\n subject folded\r\n"
    assert body == b"\r\nbody\r\n.line\r\n"


def test_bulk_gets_one_click_and_forgeries_are_removed() -> None:
    out = rewrite(MSG, did=DID, category="newsletter", transactional=False, member_domain="mail.example.com",
                  unsubscribe_url="https://relay.test/u/tok", now=0)
    msg = parse(out)
    assert msg.get_all("X-Atmos-Member-Did") == [DID]
    assert msg.get_all("Feedback-ID") == [feedback_id(DID, "newsletter", "mail.example.com")]
    assert msg.get_all("List-Unsubscribe") == ["<https://relay.test/u/tok>"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "X-Atmos-Category" not in msg
    assert msg["Message-ID"].endswith("@mail.example.com>") and msg["Date"].datetime.timestamp() == 0
    assert out.endswith(b"\r\n\r\nbody\r\n.line\r\n")
    assert msg["Subject"] == "a long subject folded"


def test_transactional_has_no_unsubscribe_and_keeps_members_own() -> None:
    out = rewrite(MSG, did=DID, category="password-reset", transactional=True, member_domain="mail.example.com",
                  unsubscribe_url="https://relay.test/u/tok")
    msg = parse(out)
    assert msg.get_all("List-Unsubscribe") == ["<mailto:own@x>"]
    assert "List-Unsubscribe-Post" not in msg


def test_existing_message_id_and_date_kept() -> None:
    raw = b"From: a@m.example\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <mine@m.example>\r\n\r\nx\r\n"
    msg = parse(rewrite(raw, did=DID, category="", transactional=False, member_domain="m.example",
                        unsubscribe_url=None))
    assert msg.get_all("Message-ID") == ["<mine@m.example>"] and len(msg.get_all("Date")) == 1
    assert msg["Feedback-ID"].startswith("bulk:")


def test_feedback_id_is_stable_per_member_and_category() -> None:
    assert feedback_id(DID, "a", "d.example") == feedback_id(DID, "a", "d.example")
    assert feedback_id(DID, "a", "d.example") != feedback_id(DID, "b", "d.example")
    assert feedback_id(DID, "a", "d.example").count(":") == 3
