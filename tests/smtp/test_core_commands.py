"""Commands: parsing, limits, pipelining, STARTTLS, AUTH, EHLO keywords, purity."""

from __future__ import annotations

import subprocess
import sys

import pytest

from relay.smtp.core import ServerConnection, State
from relay.smtp.events import (
    NEED_DATA,
    AuthChallenge,
    ConnectionClosed,
    Credentials,
    Data,
    Ehlo,
    MailFrom,
    MessageComplete,
    ProtocolError,
    Quit,
    RcptTo,
    StartTls,
)
from relay.smtp.limits import Limits
from relay.smtp.reply import Reply
from tests.smtp.harness import accept_all, b64, events, exchange, in_transaction, new_conn, plain, ready, replies


def error_of(conn: ServerConnection, line: bytes) -> tuple[int, str | None]:
    got = events(conn, line)
    assert len(got) == 1 and isinstance(got[0], ProtocolError), got
    return got[0].reply.code, got[0].reply.enhanced


def test_core_never_imports_io_modules() -> None:
    code = (
        "import sys, relay.smtp.core, relay.smtp.lines, relay.smtp.envelope, relay.smtp.data;"
        "print(sorted({'trio', 'socket', 'ssl', 'asyncio', 'selectors'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- MAIL / RCPT -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "address", "params"),
    [
        (b"MAIL FROM:<a@example.com>", "a@example.com", {}),
        (b"mail from:<a@example.com>", "a@example.com", {}),
        (b"MAIL FROM: <a@example.com>", "a@example.com", {}),
        (b"MAIL FROM:<>", "", {}),
        (
            b"MAIL FROM:<a@example.com> SIZE=1000 BODY=8BITMIME",
            "a@example.com",
            {"SIZE": "1000", "BODY": "8BITMIME"},
        ),
        (b"MAIL FROM:<a@example.com> body=7bit auth=<>", "a@example.com", {"BODY": "7bit", "AUTH": "<>"}),
        (b"MAIL FROM:<@relay1.example,@relay2.example:a@example.com>", "a@example.com", {}),
        (b'MAIL FROM:<"odd>local"@example.com>', '"odd>local"@example.com', {}),
        (b"MAIL FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]", {}),
        ("MAIL FROM:<jörg@bücher.example> SMTPUTF8".encode(), "jörg@bücher.example", {"SMTPUTF8": ""}),
    ],
)
def test_mail_from_parsing(line: bytes, address: str, params: dict[str, str]) -> None:
    assert events(ready(), line + b"\r\n") == [MailFrom(address, params)]


@pytest.mark.parametrize(
    ("line", "code", "enhanced"),
    [
        (b"MAIL FROM:a@example.com", 501, "5.1.7"),
        (b"MAIL TO:<a@example.com>", 501, "5.5.4"),
        (b"MAIL FROM:<a@example.com", 501, "5.1.7"),
        (b"MAIL FROM:<a@@example.com>", 501, "5.1.7"),
        (b"MAIL FROM:<a..b@example.com>", 501, "5.1.7"),
        (b"MAIL FROM:<a@example.com>SIZE=1", 501, "5.1.7"),
        (b"MAIL FROM:<a@example.com> SIZE=abc", 501, "5.5.4"),
        (b"MAIL FROM:<a@example.com> SIZE=26214401", 552, "5.3.4"),
        (b"MAIL FROM:<a@example.com> RET=HDRS", 555, "5.5.4"),
        (b"MAIL FROM:<a@example.com> BODY=BINARYMIME", 501, "5.5.4"),
        (b"MAIL FROM:<a@example.com> SIZE=1 SIZE=2", 501, "5.5.4"),
        ("MAIL FROM:<jörg@example.com>".encode(), 553, "5.6.7"),
        (b"MAIL FROM:<" + b"a" * 65 + b"@example.com>", 501, "5.1.7"),
    ],
)
def test_mail_from_errors(line: bytes, code: int, enhanced: str) -> None:
    conn = ready()
    assert error_of(conn, line + b"\r\n") == (code, enhanced)
    assert conn.state is State.READY


def test_rcpt_parsing_and_errors() -> None:
    conn = ready()
    events(conn, b"MAIL FROM:<a@example.com>\r\n")
    assert events(conn, b"RCPT TO:<Postmaster>\r\n") == [RcptTo("Postmaster", {})]
    assert error_of(conn, b"RCPT TO:<>\r\n") == (501, "5.1.3")
    assert error_of(conn, b"RCPT TO:<b@example.org> NOTIFY=NEVER\r\n") == (555, "5.5.4")
    assert error_of(conn, "RCPT TO:<ü@example.org>\r\n".encode()) == (553, "5.6.7")
    assert error_of(conn, b"RCPT FROM:<b@example.org>\r\n") == (501, "5.5.4")


def test_utf8_recipient_needs_smtputf8_on_mail() -> None:
    conn = ready()
    events(conn, b"MAIL FROM:<a@example.com> SMTPUTF8\r\n")
    assert events(conn, "RCPT TO:<ü@example.org>\r\n".encode()) == [RcptTo("ü@example.org", {})]


def test_recipient_limit_452() -> None:
    conn = ready(limits=Limits(max_recipients=2))
    events(conn, b"MAIL FROM:<a@example.com>\r\n")
    got = replies(conn, b"RCPT TO:<1@x.example>\r\nRCPT TO:<2@x.example>\r\nRCPT TO:<3@x.example>\r\n")
    assert got[2] == b"452 4.5.3 too many recipients\r\n"
    assert conn.recipients == 2 and conn.errors == 0


def test_refused_recipients_do_not_count_toward_the_recipient_limit() -> None:
    conn = ready(limits=Limits(max_recipients=1))
    events(conn, b"MAIL FROM:<a@example.com>\r\n")
    events(conn, b"RCPT TO:<1@x.example>\r\n", app=lambda c, e: Reply(550, "5.7.1", "suppressed"))
    assert conn.recipients == 0 and conn.state is State.MAIL and conn.errors == 1
    assert events(conn, b"RCPT TO:<2@x.example>\r\n") == [RcptTo("2@x.example", {})]
    got = events(conn, b"DATA\r\n")
    assert got == [Data()]


def test_data_without_accepted_recipient_is_503() -> None:
    conn = ready()
    events(conn, b"MAIL FROM:<a@example.com>\r\n")
    events(conn, b"RCPT TO:<1@x.example>\r\n", app=lambda c, e: Reply(550, "5.1.1", "no"))
    assert error_of(conn, b"DATA\r\n") == (503, "5.5.1")


def test_require_auth_for_mail() -> None:
    conn = ready(require_auth=True, require_tls_for_auth=False)
    assert error_of(conn, b"MAIL FROM:<a@example.com>\r\n") == (530, "5.7.0")
    events(conn, f"AUTH PLAIN {plain()}\r\n".encode())
    assert conn.authenticated
    assert events(conn, b"MAIL FROM:<a@example.com>\r\n") == [MailFrom("a@example.com", {})]


# ---- lines, errors, pipelining -------------------------------------------------------


@pytest.mark.parametrize(("size", "ok"), [(512, True), (513, False)])
def test_command_line_limit_512_with_crlf(size: int, ok: bool) -> None:
    conn = ready()
    line = b"NOOP " + b"x" * (size - 7) + b"\r\n"
    assert len(line) == size
    got = events(conn, line + b"NOOP\r\n")
    if ok:
        assert len(got) == 2 and not any(isinstance(e, ProtocolError) for e in got)
    else:
        assert isinstance(got[0], ProtocolError) and got[0].reply.code == 500
        assert got[0].reply.enhanced == "5.5.6"
        assert len(got) == 2 and not isinstance(got[1], ProtocolError)  # the next line is fine


def test_long_line_is_reported_before_its_end_arrives() -> None:
    conn = ready()
    conn.receive_data(b"x" * 600)
    event = conn.next_event()
    assert isinstance(event, ProtocolError) and event.reply.code == 500
    conn.send(event.reply)
    conn.receive_data(b"y" * 5000)
    assert conn.next_event() is NEED_DATA  # the rest of the same line is dropped silently


@pytest.mark.parametrize(
    ("line", "code", "enhanced"),
    [
        (b"FOO bar\r\n", 500, "5.5.2"),
        (b"\r\n", 500, "5.5.2"),
        (b"NOOP\n", 500, "5.5.2"),
        (b"NO\rOP\r\n", 500, "5.5.2"),
        (b"NOOP \xff\r\n", 500, "5.5.2"),
        (b"EXPN staff\r\n", 502, "5.5.1"),
        (b"EHLO\r\n", 501, "5.5.4"),
        (b"RSET now\r\n", 501, "5.5.4"),
        (b"QUIT please\r\n", 501, "5.5.4"),
        (b"VRFY\r\n", 501, "5.5.4"),
    ],
)
def test_bad_commands(line: bytes, code: int, enhanced: str) -> None:
    conn = ready()
    assert error_of(conn, line) == (code, enhanced)
    assert conn.errors == 1


def test_http_request_is_dropped() -> None:
    conn = ready()
    got = events(conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(got[0], ProtocolError) and got[0].close and got[0].reply.code == 421
    assert conn.state is State.CLOSED


def test_error_budget_then_421() -> None:
    conn = ready(limits=Limits(max_errors=3))
    got = replies(conn, b"BAD\r\n" * 5)
    assert [r[:3] for r in got] == [b"500", b"500", b"500", b"421", b""]
    assert got[3].startswith(b"421 4.7.0")
    assert conn.state is State.CLOSED


def test_failed_logins_spend_the_error_budget() -> None:
    conn = ready(limits=Limits(max_errors=2), require_tls_for_auth=False)
    bad = f"AUTH PLAIN {plain(password='wrong')}\r\n".encode()
    assert replies(conn, bad)[0].startswith(b"535")
    assert replies(conn, bad)[0].startswith(b"535")
    got = replies(conn, bad)  # the third failure is over budget: 535, then 421 at once
    assert got[0].startswith(b"535") and got[1].startswith(b"421 4.7.0")


def test_pipelined_commands_are_events_in_order() -> None:
    conn = new_conn()
    wire = (
        b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"
        b"RCPT TO:<c@example.org>\r\nDATA\r\n"
    )
    got = events(conn, wire)
    assert [type(e) for e in got] == [Ehlo, MailFrom, RcptTo, RcptTo, Data]
    got = events(conn, b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    assert got == [MessageComplete(b"Subject: x\r\n\r\nhi\r\n"), Quit(), ConnectionClosed()]


def test_eof_with_partial_command() -> None:
    conn = ready()
    got = events(conn, b"NOOP\r\nMAIL FROM:<a")
    conn.receive_data(b"")
    got += events(conn)
    assert [type(e).__name__ for e in got] == ["Noop", "ConnectionClosed"]


# ---- STARTTLS (RFC 3207) -------------------------------------------------------------


def test_starttls_plaintext_injection_is_refused() -> None:
    conn = ready(tls_available=True)
    got = replies(conn, b"STARTTLS\r\nMAIL FROM:<attacker@example.com>\r\n")
    assert got[0].startswith(b"554 5.5.0")
    assert conn.state is State.CLOSED and not conn.tls_active


def test_starttls_resets_the_session() -> None:
    conn = ready(tls_available=True)
    conn.receive_data(b"STARTTLS\r\n")
    assert isinstance(conn.next_event(), StartTls)
    assert conn.send(Reply(220, "2.0.0", "go")) == b"220 2.0.0 go\r\n"
    conn.tls_started()
    assert conn.tls_active and conn.ehlo_name is None and conn.state is State.INIT
    assert error_of(conn, b"MAIL FROM:<a@example.com>\r\n") == (503, "5.5.1")
    events(conn, b"EHLO again.example\r\n")
    assert error_of(conn, b"STARTTLS\r\n") == (503, "5.5.1")


def test_starttls_not_offered_without_tls() -> None:
    assert error_of(ready(), b"STARTTLS\r\n") == (502, "5.5.1")
    assert error_of(ready(tls_available=True), b"STARTTLS now\r\n") == (501, "5.5.4")


def test_starttls_refused_by_app_keeps_plaintext() -> None:
    conn = ready(tls_available=True)
    events(conn, b"STARTTLS\r\n", app=lambda c, e: Reply(454, "4.7.0", "TLS not available"))
    assert conn.state is State.READY and not conn.tls_active


# ---- EHLO keywords -------------------------------------------------------------------


def test_ehlo_keywords_follow_tls_and_auth_state() -> None:
    conn = new_conn(tls_available=True, limits=Limits(max_message_size=1000))
    ((ehlo, wire),) = exchange(conn, b"EHLO c.example\r\n")
    assert isinstance(ehlo, Ehlo) and ehlo.extended
    lines = wire.decode().split("\r\n")
    assert lines[0] == "250-relay.example greets c.example"
    assert "250-STARTTLS" in lines and "250-SIZE 1000" in lines and "250 SMTPUTF8" in lines
    assert not any("AUTH" in line for line in lines)  # AUTH only after TLS by default
    conn.receive_data(b"STARTTLS\r\n")
    conn.next_event()
    conn.send(Reply(220, "2.0.0", "go"))
    conn.tls_started()
    _, wire = exchange(conn, b"EHLO c.example\r\n")[0]
    assert b"250-AUTH PLAIN LOGIN\r\n" in wire and b"STARTTLS" not in wire


def test_helo_gets_no_keywords() -> None:
    _, wire = exchange(new_conn(), b"HELO c.example\r\n")[0]
    assert wire == b"250 relay.example greets c.example\r\n"


def test_app_supplied_keywords() -> None:
    conn = new_conn()
    conn.receive_data(b"EHLO c\r\n")
    event = conn.next_event()
    assert isinstance(event, Ehlo)
    wire = conn.send(conn.ehlo_reply(event, ["PIPELINING"]))
    assert wire == b"250-relay.example greets c\r\n250 PIPELINING\r\n"


# ---- AUTH (RFC 4954) -----------------------------------------------------------------


def auth_ready() -> ServerConnection:
    return ready(require_tls_for_auth=False)


def test_auth_plain_initial_response() -> None:
    conn = auth_ready()
    got = events(conn, f"AUTH PLAIN {plain('did:plc:abc')}\r\n".encode())
    assert got == [Credentials("PLAIN", "did:plc:abc", "secret", "")]
    assert conn.authenticated and conn.state is State.READY


def test_auth_plain_continuation() -> None:
    conn = auth_ready()
    got = replies(conn, b"AUTH PLAIN\r\n")
    assert got == [b"334 \r\n"]
    assert conn.state is State.AUTH
    got2 = events(conn, f"{plain('u', authzid='u')}\r\n".encode())
    assert got2 == [Credentials("PLAIN", "u", "secret", "u")]


def test_auth_login_two_steps() -> None:
    conn = auth_ready()
    assert replies(conn, b"AUTH LOGIN\r\n") == [b"334 VXNlcm5hbWU6\r\n"]
    assert replies(conn, f"{b64('alice')}\r\n".encode()) == [b"334 UGFzc3dvcmQ6\r\n"]
    assert events(conn, f"{b64('secret')}\r\n".encode()) == [Credentials("LOGIN", "alice", "secret")]
    assert conn.authenticated


def test_auth_login_with_initial_username() -> None:
    conn = auth_ready()
    got = events(conn, f"AUTH LOGIN {b64('alice')}\r\n{b64('secret')}\r\n".encode())
    assert [type(e) for e in got] == [AuthChallenge, Credentials]


@pytest.mark.parametrize(
    ("wire", "code", "enhanced"),
    [
        (b"AUTH PLAIN\r\n*\r\n", 501, "5.0.0"),
        (b"AUTH LOGIN\r\n*\r\n", 501, "5.0.0"),
        (b"AUTH PLAIN !!notbase64\r\n", 501, "5.5.2"),
        (b"AUTH PLAIN\r\nbm8gbnVscw==\r\n", 501, "5.5.2"),
        (b"AUTH PLAIN =\r\n", 501, "5.5.2"),
        (b"AUTH LOGIN\r\n%%%\r\n", 501, "5.5.2"),
        (b"AUTH CRAM-MD5\r\n", 504, "5.5.4"),
        (b"AUTH\r\n", 501, "5.5.4"),
        (b"AUTH PLAIN a b\r\n", 501, "5.5.4"),
    ],
)
def test_auth_errors(wire: bytes, code: int, enhanced: str) -> None:
    conn = auth_ready()
    errors = [e for e in events(conn, wire) if isinstance(e, ProtocolError)]
    assert [(e.reply.code, e.reply.enhanced) for e in errors] == [(code, enhanced)]
    assert conn.state is State.READY and not conn.authenticated


def test_auth_line_limit() -> None:
    conn = ready(require_tls_for_auth=False, limits=Limits(max_auth_line=100))
    events(conn, b"AUTH PLAIN\r\n")
    assert error_of(conn, b"A" * 200 + b"\r\n") == (500, "5.5.6")
    assert conn.state is State.READY


def test_auth_once_and_not_in_transaction() -> None:
    conn = auth_ready()
    events(conn, f"AUTH PLAIN {plain()}\r\n".encode())
    assert error_of(conn, f"AUTH PLAIN {plain()}\r\n".encode()) == (503, "5.5.1")
    conn = in_transaction(require_tls_for_auth=False)
    assert error_of(conn, f"AUTH PLAIN {plain()}\r\n".encode()) == (503, "5.5.1")


def test_auth_requires_tls_when_configured() -> None:
    conn = ready(tls_available=True)
    assert error_of(conn, f"AUTH PLAIN {plain()}\r\n".encode()) == (530, "5.7.0")
    assert error_of(ready(auth_enabled=False), b"AUTH PLAIN\r\n") == (502, "5.5.1")


def test_failed_auth_may_be_retried() -> None:
    conn = auth_ready()
    events(conn, f"AUTH PLAIN {plain(password='nope')}\r\n".encode())
    assert not conn.authenticated and conn.errors == 1
    events(conn, f"AUTH PLAIN {plain()}\r\n".encode())
    assert conn.authenticated


def test_credentials_repr_hides_password() -> None:
    assert "secret" not in repr(Credentials("PLAIN", "u", "secret"))


# ---- budgets (Postfix smtpd_hard_error_limit / smtpd_junk_command_limit) -----------------


def refuse_rcpt(conn: ServerConnection, event: object) -> Reply:
    return Reply(550, "5.1.1", "no such user") if isinstance(event, RcptTo) else accept_all(conn, event)  # type: ignore[arg-type]


def test_refused_rcpts_hit_the_error_limit_then_421() -> None:
    conn = ready(limits=Limits(max_errors=3))
    events(conn, b"MAIL FROM:<a@example.com>\r\n")
    got = replies(conn, b"RCPT TO:<u@x.example>\r\n" * 6, app=refuse_rcpt)
    assert [r[:3] for r in got][:5] == [b"550", b"550", b"550", b"550", b"421"]
    assert got[4].startswith(b"421 4.7.0") and conn.state is State.CLOSED


def test_refused_mail_counts_but_452_from_the_core_does_not() -> None:
    conn = ready(limits=Limits(max_errors=5, max_recipients=1))
    events(conn, b"MAIL FROM:<a@example.com>\r\n", app=lambda c, e: Reply(451, "4.7.1", "rate limited"))
    assert conn.errors == 1 and conn.state is State.READY
    events(conn, b"MAIL FROM:<a@example.com>\r\nRCPT TO:<1@x.example>\r\nRCPT TO:<2@x.example>\r\n")
    assert conn.errors == 1 and conn.recipients == 1


@pytest.mark.parametrize("verb", [b"NOOP", b"RSET", b"VRFY x", b"HELP"])
def test_junk_commands_past_the_budget_count_as_errors(verb: bytes) -> None:
    conn = ready(limits=Limits(max_junk_commands=5, max_errors=2))
    got = replies(conn, (verb + b"\r\n") * 10)
    codes = [r[:3] for r in got]
    assert b"421" not in codes[:7]  # 5 free, then two errors within max_errors
    assert codes[7] == b"421" and got[7].startswith(b"421 4.7.0") and conn.state is State.CLOSED


def test_a_delivered_message_resets_errors_and_junk() -> None:
    conn = ready(limits=Limits(max_junk_commands=2, max_errors=3))
    replies(conn, b"NOOP\r\n" * 4 + b"BAD\r\n")
    assert (conn.junk, conn.errors) == (4, 3)
    replies(conn, b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.example>\r\nDATA\r\nhi\r\n.\r\n")
    assert (conn.junk, conn.errors) == (0, 0) and conn.state is State.READY


def test_message_limit_applies_to_one_transaction() -> None:
    conn = ready(limits=Limits(max_message_size=1000))
    events(conn, b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.example>\r\n")
    conn.message_limit = 10
    got = replies(conn, b"DATA\r\n" + b"x" * 50 + b"\r\n.\r\n")
    assert got[-1].startswith(b"552 5.3.4") and conn.message_limit is None
    got = replies(conn, b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n"
                  + b"x" * 50 + b"\r\n.\r\n")
    assert got[-1].startswith(b"250")


def test_buffered_counts_what_the_session_holds() -> None:
    conn = ready()
    events(conn, b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.example>\r\nDATA\r\n")
    assert conn.buffered == 0
    conn.receive_data(b"y" * 500 + b"\r\n" + b"partial")
    assert conn.next_event() is NEED_DATA
    assert conn.buffered == 502 + len(b"partial")
    conn.receive_data(b"\r\n.\r\n")
    event = conn.next_event()
    assert isinstance(event, MessageComplete)
    conn.send(Reply(250, "2.0.0", "ok"))
    assert conn.buffered == 0
