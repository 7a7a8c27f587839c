"""The pure SMTP client core: dialogues, reply parsing, EHLO extensions, pipelining, dot-stuffing."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.smtp.clientcore import (
    Answer,
    ClientConnection,
    ClientState,
    Cmd,
    Extensions,
    ReplySyntaxError,
    SmtpUsageError,
    dot_stuff,
    is_8bit,
    mail_params,
    normalize_newlines,
)
from relay.smtp.core import ServerConnection
from relay.smtp.events import NEED_DATA, ConnectionClosed, Data, Ehlo, MailFrom, MessageComplete, RcptTo
from relay.smtp.limits import Limits
from relay.smtp.reply import Reply

S = ClientState
EHLO_REPLY = (
    b"250-mx.example greets relay.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250 SMTPUTF8\r\n"
)


def answers(conn: ClientConnection, data: bytes) -> list[Answer]:
    """Feed ``data`` and collect every complete reply."""
    conn.receive_data(data)
    out: list[Answer] = []
    while isinstance(event := conn.next_reply(), Answer):
        out.append(event)
    return out


def greeted(extensions: bytes = EHLO_REPLY) -> ClientConnection:
    conn = ClientConnection()
    answers(conn, b"220 mx.example ESMTP\r\n")
    conn.ehlo("relay.example")
    answers(conn, extensions)
    assert conn.state is S.READY
    return conn


def test_client_core_never_imports_io_modules() -> None:
    code = "import sys, relay.smtp.clientcore; print(sorted({'trio', 'socket', 'ssl', 'asyncio'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"220 mx.example ESMTP\r\n"], Reply(220, None, "mx.example ESMTP")),
        ([b"220 mx.example", b" ESMTP\r\n"], Reply(220, None, "mx.example ESMTP")),  # split anywhere
        ([b"220-mx.example\r\n220-second\r\n220 third\r\n"], Reply(220, None, "mx.example", ("second", "third"))),
        ([b"220"], None),  # no line end yet
        ([b"220\r\n"], Reply(220, None, "")),  # a bare code is a complete reply
        ([b"220 ok\n"], Reply(220, None, "ok")),  # bare LF tolerated on input
        ([b"220-a\r\n", b"220-b\r\n", b"220 c\r\n"], Reply(220, None, "a", ("b", "c"))),
        ([b"220 2.0.0 ready\r\n"], Reply(220, "2.0.0", "ready")),
    ],
)
def test_greeting_parsing(chunks: list[bytes], expected: Reply | None) -> None:
    conn = ClientConnection()
    got: list[Answer] = []
    for chunk in chunks:
        got += answers(conn, chunk)
    if expected is None:
        assert got == [] and conn.next_reply() is NEED_DATA
    else:
        assert got == [Answer(Cmd.GREETING, expected)]
        assert conn.state is S.GREETED


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",  # not a reply
        b"220-a\r\n250 b\r\n",  # codes differ between lines
        b"999 no\r\n",  # first digit out of range
        b"22 short\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\r\n",  # a TLS record where a reply should be
        b"220 " + b"x" * 5000 + b"\r\n",  # over MAX_REPLY_LINE
        b"".join(b"220-x\r\n" for _ in range(300)) + b"220 y\r\n",  # over MAX_REPLY_LINES
    ],
)
def test_garbage_replies_raise(data: bytes) -> None:
    conn = ClientConnection()
    with pytest.raises(ReplySyntaxError):
        answers(conn, data)


def test_unsolicited_reply_raises() -> None:
    conn = greeted()
    with pytest.raises(ReplySyntaxError, match="no command pending"):
        answers(conn, b"250 what\r\n")


def test_eof_gives_connection_closed() -> None:
    conn = ClientConnection()
    conn.receive_data(b"220-partial\r\n")
    assert conn.next_reply() is NEED_DATA
    conn.receive_data(b"")
    assert isinstance(conn.next_reply(), ConnectionClosed)
    assert conn.state is S.CLOSED


# ---- EHLO / HELO ------------------------------------------------------------------------------


def test_ehlo_extensions_recorded() -> None:
    conn = greeted()
    ext = conn.extensions
    assert conn.extended
    assert ext.pipelining and ext.eightbitmime and ext.starttls and ext.enhancedstatuscodes and ext.smtputf8
    assert ext.size == 1000
    assert "pipelining" in ext and "AUTH" not in ext


@pytest.mark.parametrize(
    ("lines", "size", "keywords"),
    [
        (("SIZE",), 0, {"SIZE": ""}),  # RFC 1870: no limit announced
        (("SIZE 0",), 0, {"SIZE": "0"}),
        (("SIZE nonsense",), 0, {"SIZE": "nonsense"}),
        (("size 52428800", "auth PLAIN LOGIN"), 52428800, {"SIZE": "52428800", "AUTH": "PLAIN LOGIN"}),
        (("8BITMIME", "  DSN  ", "-bogus", ""), None, {"8BITMIME": "", "DSN": ""}),
        (("SIZE 10", "SIZE 20"), 10, {"SIZE": "10"}),  # the first one counts
    ],
)
def test_extension_parsing(lines: tuple[str, ...], size: int | None, keywords: dict[str, str]) -> None:
    ext = Extensions.from_reply(Reply(250, None, "mx.example", lines))
    assert ext.size == size
    assert dict(ext.keywords) == keywords


@pytest.mark.parametrize(
    ("ehlo_reply", "then", "state", "extended"),
    [
        # RFC 5321 §4.1.1.1: an old server refuses EHLO with 500/502; the client falls back to HELO.
        (b"500 5.5.2 command not recognized\r\n", b"250 mx.example\r\n", S.READY, False),
        (b"502 not implemented\r\n", b"250 mx.example\r\n", S.READY, False),
        (b"500 what\r\n", b"550 go away\r\n", S.GREETED, False),
    ],
)
def test_helo_fallback(ehlo_reply: bytes, then: bytes, state: ClientState, extended: bool) -> None:
    conn = ClientConnection()
    answers(conn, b"220 old.example SMTP\r\n")
    assert conn.ehlo("relay.example") == b"EHLO relay.example\r\n"
    [answer] = answers(conn, ehlo_reply)
    assert answer.command is Cmd.EHLO and answer.reply.is_permanent and conn.state is S.GREETED
    assert conn.helo("relay.example") == b"HELO relay.example\r\n"
    [answer] = answers(conn, then)
    assert answer.command is Cmd.HELO
    assert conn.state is state and conn.extended is extended
    assert conn.extensions == Extensions()


def test_refused_greeting_allows_only_quit() -> None:
    conn = ClientConnection()
    [answer] = answers(conn, b"554 5.7.1 no service for you\r\n")
    assert answer.reply.code == 554 and conn.state is S.REFUSED
    with pytest.raises(SmtpUsageError):
        conn.ehlo("relay.example")
    assert conn.quit() == b"QUIT\r\n"
    answers(conn, b"221 bye\r\n")
    assert conn.state is S.CLOSED


def test_421_closes_at_any_point() -> None:
    conn = greeted()
    conn.mail("a@x.example")
    conn.rcpt("b@y.example")
    [answer] = answers(conn, b"421 4.3.2 shutting down\r\n")
    assert answer.command is Cmd.MAIL and conn.state is S.CLOSED and conn.pending == ()


# ---- STARTTLS ---------------------------------------------------------------------------------


def test_starttls_then_ehlo_again() -> None:
    conn = greeted()
    assert conn.starttls() == b"STARTTLS\r\n"
    answers(conn, b"220 2.0.0 go ahead\r\n")
    assert conn.state is S.TLS
    with pytest.raises(SmtpUsageError):
        conn.receive_data(b"250 plaintext injected after STARTTLS\r\n")  # CVE-2011-0411
    conn.tls_started()
    # RFC 3207 §4.2: forget the pre-TLS extensions; EHLO again.
    assert conn.state is S.GREETED and conn.tls_active and conn.extensions == Extensions()
    with pytest.raises(SmtpUsageError):
        conn.mail("a@x.example")
    conn.ehlo("relay.example")
    answers(conn, b"250-mx.example\r\n250 PIPELINING\r\n")
    assert conn.state is S.READY and conn.extensions.pipelining and not conn.extensions.starttls
    with pytest.raises(SmtpUsageError):
        conn.starttls()


def test_starttls_response_injection_refused() -> None:
    """Replies queued in clear text behind the 220 would be taken as coming through TLS."""
    conn = greeted()
    conn.starttls()
    with pytest.raises(ReplySyntaxError, match="after the 220"):
        answers(conn, b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
    assert conn.state is S.CLOSED


def test_starttls_refused_stays_ready() -> None:
    conn = greeted()
    conn.starttls()
    [answer] = answers(conn, b"454 4.7.0 TLS not available\r\n")
    assert answer.command is Cmd.STARTTLS and conn.state is S.READY
    with pytest.raises(SmtpUsageError):
        conn.tls_started()


# ---- transactions -----------------------------------------------------------------------------

# (commands as (method, args), reply bytes, expected (command, code) pairs, state after)
LOCKSTEP = [
    pytest.param(
        [("mail", "a@x.example"), ("rcpt", "b@y.example"), ("data",)],
        [b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"354 go\r\n"],
        [(Cmd.MAIL, 250), (Cmd.RCPT, 250), (Cmd.DATA, 354)],
        S.DATA,
        id="happy path",
    ),
    pytest.param(
        [("mail", "a@x.example")],
        [b"451 4.3.0 try later\r\n"],
        [(Cmd.MAIL, 451)],
        S.READY,
        id="MAIL refused",
    ),
    pytest.param(
        [("mail", "a@x.example"), ("rcpt", "b@y.example"), ("rcpt", "c@y.example")],
        [b"250 ok\r\n", b"550 5.1.1 unknown\r\n", b"250 ok\r\n"],
        [(Cmd.MAIL, 250), (Cmd.RCPT, 550), (Cmd.RCPT, 250)],
        S.RCPT,
        id="one RCPT refused",
    ),
    pytest.param(
        [("mail", "a@x.example"), ("rcpt", "b@y.example"), ("rset",)],
        [b"250 ok\r\n", b"550 5.1.1 unknown\r\n", b"250 2.0.0 ok\r\n"],
        [(Cmd.MAIL, 250), (Cmd.RCPT, 550), (Cmd.RSET, 250)],
        S.READY,
        id="all RCPT refused then RSET",
    ),
    pytest.param(
        [("mail", "a@x.example"), ("rcpt", "b@y.example"), ("data",)],
        [b"250 ok\r\n", b"250 ok\r\n", b"554 5.5.1 no\r\n"],
        [(Cmd.MAIL, 250), (Cmd.RCPT, 250), (Cmd.DATA, 554)],
        S.RCPT,
        id="DATA refused",
    ),
    pytest.param(
        [("noop",), ("quit",)],
        [b"250 ok\r\n", b"221 2.0.0 bye\r\n"],
        [(Cmd.NOOP, 250), (Cmd.QUIT, 221)],
        S.CLOSED,
        id="NOOP and QUIT",
    ),
]


@pytest.mark.parametrize(("commands", "replies", "expected", "state"), LOCKSTEP)
def test_lockstep_dialogues(
    commands: list[tuple[str, ...]], replies: list[bytes], expected: list[tuple[Cmd, int]], state: ClientState
) -> None:
    conn = greeted(b"250-mx.example\r\n250 8BITMIME\r\n")  # no PIPELINING
    got = []
    for (method, *args), reply in zip(commands, replies, strict=True):
        getattr(conn, method)(*args)
        got += [(a.command, a.reply.code) for a in answers(conn, reply)]
    assert got == expected
    assert conn.state is state


def test_commands_render() -> None:
    conn = greeted()
    assert conn.mail("", {"SIZE": "12", "BODY": "8BITMIME"}) == b"MAIL FROM:<> SIZE=12 BODY=8BITMIME\r\n"
    assert conn.rcpt("b@y.example") == b"RCPT TO:<b@y.example>\r\n"
    assert conn.data() == b"DATA\r\n"
    conn2 = greeted()
    out = conn2.mail("ü@x.example", {"SMTPUTF8": ""}) + conn2.rcpt("ø@y.example")
    assert out == "MAIL FROM:<ü@x.example> SMTPUTF8\r\nRCPT TO:<ø@y.example>\r\n".encode()


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("mail", ("a@x.example>\r\nRCPT TO:<victim@y.example",)),  # command injection
        ("mail", ("a b@x.example",)),
        ("mail", ("a@x.example", {"SIZE": "1\r\nDATA"})),
        ("mail", ("a@x.example", {"BAD KEY": "1"})),
        ("mail", ("ü@x.example",)),  # non-ASCII without SMTPUTF8
        ("ehlo", ("relay.example\r\nMAIL FROM:<a@b>",)),
        ("ehlo", ("",)),
    ],
)
def test_bad_arguments_refused(method: str, args: tuple[object, ...]) -> None:
    conn = greeted()
    with pytest.raises(SmtpUsageError):
        getattr(conn, method)(*args)
    assert conn.pending == ()


def test_out_of_sequence_refused() -> None:
    conn = ClientConnection()
    with pytest.raises(SmtpUsageError, match="greeting"):
        conn.ehlo("relay.example")  # §3.1: wait for the greeting
    conn = greeted()
    for method in ("rcpt", "data"):
        with pytest.raises(SmtpUsageError):
            getattr(conn, method)(*(("b@y.example",) if method == "rcpt" else ()))
    with pytest.raises(SmtpUsageError):
        conn.message(b"body")  # only after 354


# ---- pipelining (RFC 2920) --------------------------------------------------------------------


def test_pipelined_transaction_replies_in_order() -> None:
    conn = greeted()
    out = conn.mail("a@x.example") + conn.rcpt("b@y.example") + conn.rcpt("c@y.example") + conn.data()
    assert out.count(b"\r\n") == 4
    assert conn.pending == (Cmd.MAIL, Cmd.RCPT, Cmd.RCPT, Cmd.DATA)
    got = answers(conn, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n450 4.2.0 busy\r\n354 go\r\n")
    assert [(a.command, a.reply.code) for a in got] == [
        (Cmd.MAIL, 250),
        (Cmd.RCPT, 250),
        (Cmd.RCPT, 450),
        (Cmd.DATA, 354),
    ]
    assert conn.state is S.DATA and conn.accepted == 1
    assert conn.message(b"hi") == b"hi\r\n.\r\n"
    [answer] = answers(conn, b"250 2.0.0 queued\r\n")
    assert answer.command is Cmd.MESSAGE and conn.state is S.READY and conn.accepted == 0


def test_pipelined_all_refused() -> None:
    conn = greeted()
    conn.mail("a@x.example")
    conn.rcpt("b@y.example")
    conn.data()
    got = answers(conn, b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
    assert [a.reply.code for a in got] == [250, 550, 554]
    assert conn.state is S.MAIL and conn.accepted == 0
    conn.rset()
    answers(conn, b"250 ok\r\n")
    assert conn.state is S.READY


def test_pipelined_mail_refused_rest_follow() -> None:
    conn = greeted()
    conn.mail("a@x.example")
    conn.rcpt("b@y.example")
    conn.data()
    got = answers(conn, b"550 5.7.1 sender refused\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert [a.reply.code for a in got] == [550, 503, 503]
    assert conn.state is S.READY


def test_replies_arriving_in_one_chunk_before_commands_are_known() -> None:
    """Replies split over chunks at odd places still pair with the right commands."""
    conn = greeted()
    conn.mail("a@x.example")
    conn.rcpt("b@y.example")
    conn.data()
    stream = b"250-2.1.0 ok\r\n250 2.1.0 more\r\n250 2.1.5 ok\r\n354 go\r\n"
    got: list[Answer] = []
    for i in range(len(stream)):
        got += answers(conn, stream[i : i + 1])
    assert [a.command for a in got] == [Cmd.MAIL, Cmd.RCPT, Cmd.DATA]
    assert got[0].reply == Reply(250, "2.1.0", "ok", ("more",))


@pytest.mark.parametrize("first", ["ehlo", "data", "noop", "starttls"])
def test_group_enders_cannot_be_followed(first: str) -> None:
    """RFC 2920 §3.1: EHLO, DATA, NOOP (and STARTTLS) end a group."""
    conn = greeted()
    if first == "data":
        conn.mail("a@x.example")
        conn.rcpt("b@y.example")
        answers(conn, b"250 ok\r\n250 ok\r\n")
        conn.data()
    else:
        getattr(conn, first)(*(("relay.example",) if first == "ehlo" else ()))
    with pytest.raises(SmtpUsageError, match="before the reply"):
        conn.rset()


def test_no_pipelining_without_the_extension() -> None:
    conn = greeted(b"250-mx.example\r\n250 SIZE 100\r\n")
    conn.mail("a@x.example")
    with pytest.raises(SmtpUsageError, match="no PIPELINING"):
        conn.rcpt("b@y.example")


def test_empty_message_after_354_without_recipients() -> None:
    """RFC 2920 §3.1: a server that says 354 though every RCPT failed gets an empty message."""
    conn = greeted()
    conn.mail("a@x.example")
    conn.rcpt("b@y.example")
    conn.data()
    answers(conn, b"250 ok\r\n550 no\r\n354 go\r\n")
    assert conn.state is S.DATA and conn.accepted == 0
    assert conn.message(b"") == b".\r\n"


# ---- message content --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),  # final CRLF added
        (b".leading\r\n", b"..leading\r\n.\r\n"),  # §4.5.2
        (b"x\r\n.\r\nafter\r\n", b"x\r\n..\r\nafter\r\n.\r\n"),  # a lone dot would end the data
        (b"x\r\n..two\r\n", b"x\r\n...two\r\n.\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),  # bare LF -> CRLF
        (b"a\nb", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n.\r\n"),  # bare CR -> CRLF (no smuggling through us)
        (b"x\n.\nsmuggled\n", b"x\r\n..\r\nsmuggled\r\n.\r\n"),
        (b"x\r\n.\rMAIL\r\n", b"x\r\n..\r\nMAIL\r\n.\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"caf\xc3\xa9\r\n", b"caf\xc3\xa9\r\n.\r\n"),
    ],
)
def test_dot_stuffing(data: bytes, wire: bytes) -> None:
    assert dot_stuff(data) == wire


def test_normalize_newlines_fast_path_is_identity() -> None:
    data = b"a\r\nb\r\n"
    assert normalize_newlines(data) is data


@given(st.binary(max_size=300) | st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\xff"])).map(b"".join))
def test_stuffed_message_survives_our_server(data: bytes) -> None:
    """What the client core sends, the server core unstuffs back to the normalized message."""
    server = ServerConnection(hostname="mx.example", limits=Limits(max_text_line=100_000))
    server.send(Reply(220, None, "mx.example"))
    for line, event_type in ((b"EHLO c\r\n", Ehlo), (b"MAIL FROM:<a@b.example>\r\n", MailFrom)):
        server.receive_data(line)
        event = server.next_event()
        assert isinstance(event, event_type)
        server.send(Reply(250, None, "ok"))
    server.receive_data(b"RCPT TO:<c@d.example>\r\n")
    assert isinstance(server.next_event(), RcptTo)
    server.send(Reply(250, None, "ok"))
    server.receive_data(b"DATA\r\n")
    assert isinstance(server.next_event(), Data)
    server.send(Reply(354, None, "go"))
    server.receive_data(dot_stuff(data))
    event = server.next_event()
    assert isinstance(event, MessageComplete)
    assert event.data == normalize_newlines(data)
    assert b"\r" not in event.data.replace(b"\r\n", b"") and b"\n" not in event.data.replace(b"\r\n", b"")


def test_client_core_talks_to_server_core() -> None:
    """The two pure cores in one conversation, pipelined, with no I/O at all."""
    server = ServerConnection(hostname="mx.example", auth_enabled=False)
    client = ClientConnection()
    got: list[Answer] = []

    def pump(out: bytes) -> None:
        server.receive_data(out)
        replies = b""
        while (event := server.next_event()) is not NEED_DATA:
            if isinstance(event, ConnectionClosed):
                break
            reply = server.ehlo_reply(event) if isinstance(event, Ehlo) else _server_reply(event)
            replies += server.send(reply)
        got.extend(answers(client, replies))

    got += answers(client, server.send(Reply(220, None, "mx.example ESMTP")))
    pump(client.ehlo("relay.example"))
    assert client.extensions.pipelining and client.extensions.size == Limits().max_message_size
    params = mail_params(client.extensions, size=20, body_8bit=True)
    assert params == {"SIZE": "20", "BODY": "8BITMIME"}
    pump(client.mail("a@x.example", params) + client.rcpt("b@y.example") + client.rcpt("bad@y.example") + client.data())
    pump(client.message(b"Subject: t\n\n.dot\n"))
    pump(client.quit())
    assert [(a.command, a.reply.code) for a in got] == [
        (Cmd.GREETING, 220),
        (Cmd.EHLO, 250),
        (Cmd.MAIL, 250),
        (Cmd.RCPT, 250),
        (Cmd.RCPT, 550),
        (Cmd.DATA, 354),
        (Cmd.MESSAGE, 250),
        (Cmd.QUIT, 221),
    ]
    assert client.state is S.CLOSED


def _server_reply(event: object) -> Reply:
    if isinstance(event, RcptTo) and event.address.startswith("bad@"):
        return Reply(550, "5.1.1", "unknown")
    if isinstance(event, Data):
        return Reply(354, None, "go")
    if isinstance(event, MessageComplete):
        assert event.data == b"Subject: t\r\n\r\n.dot\r\n"
        return Reply(250, "2.0.0", "queued")
    if type(event).__name__ == "Quit":
        return Reply(221, "2.0.0", "bye")
    return Reply(250, "2.0.0", "ok")


# ---- MAIL parameters --------------------------------------------------------------------------


def ext(*keywords: str) -> Extensions:
    return Extensions.from_reply(Reply(250, None, "mx", keywords))


@pytest.mark.parametrize(
    ("extensions", "kwargs", "expected"),
    [
        (ext(), {"size": 10}, {}),
        (ext("SIZE 100"), {"size": 10}, {"SIZE": "10"}),
        (ext("SIZE"), {"size": 10**9}, {"SIZE": str(10**9)}),  # no limit announced
        (ext("SIZE 100"), {"size": 101}, Reply(552, "5.3.4", "message size 101 exceeds size limit 100 of server")),
        (ext("8BITMIME"), {"size": 1, "body_8bit": True}, {"BODY": "8BITMIME"}),
        (ext(), {"size": 1, "body_8bit": True}, {}),  # not offered: sent as is
        (ext("8BITMIME", "SMTPUTF8"), {"size": 1, "smtputf8": True}, {"BODY": "8BITMIME", "SMTPUTF8": ""}),
        (
            ext("8BITMIME"),
            {"size": 1, "smtputf8": True},
            Reply(553, "5.6.7", "SMTPUTF8 is required, but was not offered by the server"),
        ),
    ],
)
def test_mail_params(extensions: Extensions, kwargs: dict[str, object], expected: object) -> None:
    assert mail_params(extensions, **kwargs) == expected  # type: ignore[arg-type]


def test_is_8bit() -> None:
    assert not is_8bit(b"plain ascii\r\n")
    assert is_8bit(b"caf\xc3\xa9")
