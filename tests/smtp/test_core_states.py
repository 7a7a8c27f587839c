"""Every command in every state, checked against a grid written out independently of
relay.smtp.core.TRANSITIONS (RFC 5321 §4.1.4, RFC 3207 §4, RFC 4954 §4)."""

from __future__ import annotations

import pytest

from relay.smtp.core import ServerConnection, SmtpUsageError, State
from relay.smtp.events import (
    ConnectionClosed,
    Credentials,
    Data,
    Ehlo,
    Event,
    Help,
    MailFrom,
    MessageComplete,
    Noop,
    ProtocolError,
    Quit,
    RcptTo,
    Rset,
    StartTls,
    Vrfy,
)
from relay.smtp.reply import Reply
from tests.smtp.harness import GREETING, accept_all, events, in_data, new_conn, plain

COMMANDS: dict[str, tuple[bytes, type[Event]]] = {
    "EHLO": (b"EHLO client.example", Ehlo),
    "HELO": (b"HELO client.example", Ehlo),
    "STARTTLS": (b"STARTTLS", StartTls),
    "AUTH": (f"AUTH PLAIN {plain()}".encode(), Credentials),
    "MAIL": (b"MAIL FROM:<a@example.com>", MailFrom),
    "RCPT": (b"RCPT TO:<b@example.org>", RcptTo),
    "DATA": (b"DATA", Data),
    "RSET": (b"RSET", Rset),
    "NOOP": (b"NOOP", Noop),
    "VRFY": (b"VRFY postmaster", Vrfy),
    "HELP": (b"HELP", Help),
    "QUIT": (b"QUIT", Quit),
}

# State after a successful reply; "503" = refused as out of sequence.
STATES = ("init", "ready", "mail", "rcpt")
GRID = """
            init    ready   mail    rcpt
EHLO        ready   ready   ready   ready
HELO        ready   ready   ready   ready
STARTTLS    503     tls     503     503
AUTH        503     ready   503     503
MAIL        503     mail    503     503
RCPT        503     503     rcpt    rcpt
DATA        503     503     503     data
RSET        init    ready   ready   ready
NOOP        init    ready   mail    rcpt
VRFY        init    ready   mail    rcpt
HELP        init    ready   mail    rcpt
QUIT        closed  closed  closed  closed
"""
CASES = [
    (command, STATES[i], cell)
    for row in GRID.strip().splitlines()[1:]
    for command, *cells in [row.split()]
    for i, cell in enumerate(cells)
]

PREFIX = {
    "init": b"",
    "ready": b"EHLO client.example\r\n",
    "mail": b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\n",
    "rcpt": b"EHLO client.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n",
}


def conn_in(state: str) -> ServerConnection:
    conn = new_conn(tls_available=True, require_tls_for_auth=False)
    events(conn, PREFIX[state])
    assert conn.state is State(state)
    return conn


def test_grid_covers_every_command() -> None:
    assert {c for c, _, _ in CASES} == set(COMMANDS)
    assert len(CASES) == len(COMMANDS) * len(STATES)


@pytest.mark.parametrize(("command", "state", "expected"), CASES)
def test_command_in_state(command: str, state: str, expected: str) -> None:
    conn = conn_in(state)
    line, event_type = COMMANDS[command]
    conn.receive_data(line + b"\r\n")
    event = conn.next_event()
    if expected == "503":
        assert isinstance(event, ProtocolError)
        assert (event.reply.code, event.reply.enhanced) == (503, "5.5.1")
        conn.send(event.reply)
        assert conn.state is State(state)
        return
    assert isinstance(event, event_type)
    conn.send(accept_all(conn, event))
    assert conn.state is State(expected)


ALLOWED = [c for c in CASES if c[2] not in ("503", "closed")]


@pytest.mark.parametrize(("command", "state", "expected"), ALLOWED)
def test_refusal_keeps_state(command: str, state: str, expected: str) -> None:
    """A negative reply from the app leaves the state alone."""
    conn = conn_in(state)
    conn.receive_data(COMMANDS[command][0] + b"\r\n")
    conn.next_event()
    conn.send(Reply(554, "5.7.1", "no"))
    assert conn.state is State(state)


# Budgets, written out independently of relay.smtp.core: what an app refusal (554) costs against
# max_errors (smtpd_hard_error_limit counts refused MAIL/RCPT), and which commands are junk
# (smtpd_junk_command_limit: NOOP, RSET, VRFY; HELP too here).
REFUSAL_COSTS_AN_ERROR = {"MAIL", "RCPT"}
JUNK = {"RSET", "NOOP", "VRFY", "HELP"}


@pytest.mark.parametrize(("command", "state", "expected"), ALLOWED)
def test_refusal_error_cost(command: str, state: str, expected: str) -> None:
    conn = conn_in(state)
    conn.receive_data(COMMANDS[command][0] + b"\r\n")
    conn.next_event()
    conn.send(Reply(554, "5.7.1", "no"))
    assert conn.errors == (1 if command in REFUSAL_COSTS_AN_ERROR else 0)


@pytest.mark.parametrize(("command", "state", "expected"), CASES)
def test_junk_count(command: str, state: str, expected: str) -> None:
    conn = conn_in(state)
    before = conn.junk
    conn.receive_data(COMMANDS[command][0] + b"\r\n")
    event = conn.next_event()
    conn.send(event.reply if isinstance(event, ProtocolError) else accept_all(conn, event))
    counted = command in JUNK and expected != "503"
    assert conn.junk - before == (1 if counted else 0)


def test_lines_in_data_state_are_message_content() -> None:
    conn = in_data()
    conn.receive_data(b"MAIL FROM:<x@y.z>\r\nQUIT\r\n.\r\n")
    event = conn.next_event()
    assert isinstance(event, MessageComplete)
    assert event.data == b"MAIL FROM:<x@y.z>\r\nQUIT\r\n"


def test_lines_in_auth_state_are_sasl_responses() -> None:
    conn = conn_in("ready")
    events(conn, b"AUTH PLAIN\r\n")
    assert conn.state.name == "AUTH"  # (not "is": mypy would narrow and flag the check below)
    conn.receive_data(b"QUIT\r\n")  # not base64 of a PLAIN response
    event = conn.next_event()
    assert isinstance(event, ProtocolError) and event.reply.code == 501
    conn.send(event.reply)
    assert conn.state is State.READY


def test_api_misuse_raises() -> None:
    fresh = ServerConnection(hostname="relay.example")
    with pytest.raises(SmtpUsageError):
        fresh.next_event()  # the greeting is still owed
    fresh.send(GREETING)
    with pytest.raises(SmtpUsageError):
        fresh.send(GREETING)  # nothing waits for a reply
    fresh.receive_data(b"NOOP\r\n")
    fresh.next_event()
    with pytest.raises(SmtpUsageError):
        fresh.next_event()  # NOOP not answered yet
    with pytest.raises(SmtpUsageError):
        fresh.tls_started()


def test_tls_state_requires_handshake() -> None:
    conn = conn_in("ready")
    conn.receive_data(b"STARTTLS\r\n")
    assert isinstance(conn.next_event(), StartTls)
    conn.send(Reply(220, "2.0.0", "go"))
    assert conn.state is State.TLS
    with pytest.raises(SmtpUsageError):
        conn.next_event()
    with pytest.raises(SmtpUsageError):
        conn.receive_data(b"\x16\x03\x01")  # handshake bytes belong to TLS


@pytest.mark.parametrize("code", [554, 521, 421])
def test_refusing_greeting_closes(code: int) -> None:
    conn = ServerConnection(hostname="relay.example")
    conn.send(Reply(code, "5.7.1", "go away"))
    assert conn.state is State.CLOSED
    assert isinstance(conn.next_event(), ConnectionClosed)


@pytest.mark.parametrize("code", [421, 521])
def test_closing_codes_from_the_app_close(code: int) -> None:
    conn = conn_in("ready")
    conn.receive_data(b"MAIL FROM:<a@example.com>\r\n")
    conn.next_event()
    conn.send(Reply(code, "4.3.2", "bye"))
    assert conn.state is State.CLOSED
