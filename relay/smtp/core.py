"""The SMTP server protocol as a pure state machine (h11 style): bytes in, events out.

Never imports trio, socket, ssl or asyncio; the I/O layer (``relay.smtp.server``)
owns sockets, TLS and timeouts. Use::

    conn = ServerConnection(hostname="relay.example", tls_available=True)
    out = conn.send(Reply(220, None, "relay.example ESMTP"))   # the greeting
    conn.receive_data(b"EHLO client.example\\r\\n")              # b"" = EOF
    event = conn.next_event()          # Ehlo(name="client.example", extended=True)
    out = conn.send(conn.ehlo_reply(event))

Every event from ``next_event`` (but ``ConnectionClosed``) is answered by exactly
one ``send(reply)``; the core moves on according to the reply code, as given by
the one transition table ``TRANSITIONS`` (e.g. MAIL moves to ``State.MAIL`` only
on 2xx, DATA to ``State.DATA`` only on 354). Commands out of sequence, unknown
commands and syntax errors come back as ``ProtocolError`` events carrying the
reply to send (503 5.5.1 / 500 5.5.2 / 501 5.5.4). Replies 421 and 521, a
non-220 greeting, 221 to QUIT and ``ProtocolError(close=True)`` end the session:
``state`` becomes ``State.CLOSED`` and the app closes the connection.

Budgets (Postfix smtpd style, from ``Limits``): every error the core answers, a
failed AUTH (535) and every MAIL/RCPT the app refuses (4xx/5xx) counts toward
``max_errors``; past it the next event is ``421 4.7.0`` and the session ends
(smtpd_hard_error_limit). NOOP, RSET, VRFY and HELP past ``max_junk_commands``
each count as an error too (smtpd_junk_command_limit). A delivered message (2xx
to the final dot) resets both counters. ``message_limit`` lowers the size limit
for the current transaction (the app sets it, e.g. for report addresses), and
``buffered`` says how many received bytes the session holds in memory.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Sequence

from relay.smtp.data import DataReader
from relay.smtp.envelope import ArgumentError, parse_mail, parse_rcpt
from relay.smtp.events import (
    NEED_DATA,
    AuthChallenge,
    ConnectionClosed,
    Credentials,
    Data,
    Ehlo,
    Event,
    Help,
    MailFrom,
    NeedData,
    Noop,
    ProtocolError,
    Quit,
    RcptTo,
    Rset,
    StartTls,
    Vrfy,
)
from relay.smtp.limits import Limits
from relay.smtp.lines import TOO_LONG, LineBuffer
from relay.smtp.reply import Reply


class State(enum.Enum):
    # Identity hash in C: Enum's default hashes the name in Python, and the
    # transition table is looked up on every command.
    __hash__ = object.__hash__

    GREETING = "greeting"  # connected; the app has not sent its greeting yet
    INIT = "init"  # greeted; EHLO/HELO expected
    READY = "ready"  # after EHLO: no mail transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # 354 sent: reading the message
    AUTH = "auth"  # 334 sent: reading a SASL response line
    TLS = "tls"  # 220 to STARTTLS sent: the app runs the handshake, then tls_started()
    CLOSED = "closed"


class Cmd(enum.Enum):
    __hash__ = object.__hash__

    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"
    VRFY = "VRFY"
    HELP = "HELP"


S, C = State, Cmd
#: The states in which lines are commands.
COMMAND_STATES = (S.INIT, S.READY, S.MAIL, S.RCPT)

#: (state, command) -> state after a successful reply. A pair that is absent is out of
#: sequence (503 5.5.1). RFC 5321 §4.1.4 (order of commands), RFC 3207 §4 (STARTTLS),
#: RFC 4954 §4 (AUTH not during a transaction).
TRANSITIONS: dict[tuple[State, Cmd], State] = {
    **{(s, c): s for s in COMMAND_STATES for c in (C.NOOP, C.VRFY, C.HELP)},
    **{(s, c): S.READY for s in COMMAND_STATES for c in (C.EHLO, C.HELO)},
    **{(s, C.QUIT): S.CLOSED for s in COMMAND_STATES},
    **{(s, C.RSET): S.INIT if s is S.INIT else S.READY for s in COMMAND_STATES},
    (S.READY, C.STARTTLS): S.TLS,
    (S.READY, C.AUTH): S.READY,
    (S.READY, C.MAIL): S.MAIL,
    (S.MAIL, C.RCPT): S.RCPT,
    (S.RCPT, C.RCPT): S.RCPT,
    (S.RCPT, C.DATA): S.DATA,
}

_VERBS = {cmd.value: cmd for cmd in Cmd}

#: Commands that do nothing for the mail: counted against limits.max_junk_commands.
JUNK_COMMANDS = frozenset({C.NOOP, C.RSET, C.VRFY, C.HELP})
#: Commands whose refusal by the app (4xx/5xx) counts as an error (smtpd_hard_error_limit).
_COUNTED_REFUSALS = frozenset({C.MAIL, C.RCPT})

#: Commands whose success is one specific code; for the others any 2xx.
SUCCESS_CODE = {C.STARTTLS: 220, C.DATA: 354, C.QUIT: 221}

#: Replies after which the server closes the channel (RFC 5321 §3.8, RFC 7504).
CLOSING_CODES = frozenset({421, 521})

# Recognised but not offered (§4.2.4: 502), and non-SMTP commands that mean a
# cross-protocol attack (Postfix smtpd_forbidden_commands): dropped at once.
_NOT_IMPLEMENTED = frozenset({"EXPN", "BDAT", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"})
_FORBIDDEN = frozenset({"GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS"})

TOO_MANY_ERRORS = Reply(421, "4.7.0", "too many errors, closing connection")
_LOGIN_USER, _LOGIN_PASS = "VXNlcm5hbWU6", "UGFzc3dvcmQ6"  # base64 "Username:" / "Password:"

_OnReply = Callable[[Reply], None]
_SaslStep = Callable[[str], Event]


class SmtpUsageError(RuntimeError):
    """The application misused the API (not the peer's fault): a bug to fix."""


class ServerConnection:
    """One server-side SMTP session."""

    def __init__(
        self,
        *,
        hostname: str,
        limits: Limits | None = None,
        tls_available: bool = False,
        tls_active: bool = False,
        auth_enabled: bool = True,
        require_tls_for_auth: bool = True,
        require_auth: bool = False,
    ) -> None:
        self.hostname = hostname
        self.limits = limits or Limits()
        self.tls_available = tls_available
        self.auth_enabled = auth_enabled
        self.require_tls_for_auth = require_tls_for_auth
        self.require_auth = require_auth
        self.state = State.GREETING
        self.tls_active = tls_active  # True from the start under implicit TLS (RFC 8314 §3.3)
        self.authenticated = False
        self.ehlo_name: str | None = None
        self.recipients = 0  # accepted RCPTs in the current transaction
        self.errors = 0  # counted against limits.max_errors
        self.junk = 0  # NOOP/RSET/VRFY/HELP, counted against limits.max_junk_commands
        self.message_limit: int | None = None  # this transaction's size limit, if lower than the default
        self._smtputf8 = False  # the current transaction was opened with MAIL ... SMTPUTF8
        self._lines = LineBuffer()
        self._reader: DataReader | None = None
        self._sasl_step: _SaslStep | None = None
        self._close_after = False
        self._on_reply: _OnReply | None = self._after_greeting

    # ---- the API ---------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed received bytes; ``b""`` means the peer closed its side."""
        if self.state is State.TLS:
            # RFC 3207 §4.2 / CVE-2011-0411: bytes after STARTTLS belong to the TLS layer.
            raise SmtpUsageError("bytes after STARTTLS must go to the TLS handshake")
        if self.state is State.CLOSED or self._lines.eof:
            return
        self._lines.feed(data)

    def next_event(self) -> Event | NeedData:
        if self._on_reply is not None:
            raise SmtpUsageError("answer the previous event (or the greeting) with send() first")
        if self.state is State.TLS:
            raise SmtpUsageError("run the TLS handshake and call tls_started() first")
        if self.state is State.CLOSED:
            return ConnectionClosed()
        if self.errors > self.limits.max_errors:
            return self._error(TOO_MANY_ERRORS, count=False, close=True)
        if self.state is State.DATA:
            return self._next_data()
        if self.state is State.AUTH:
            return self._next_sasl()
        return self._next_command()

    def send(self, reply: Reply) -> bytes:
        """Answer the pending event; returns the bytes to write."""
        on_reply, self._on_reply = self._on_reply, None
        if on_reply is None:
            raise SmtpUsageError("no event is waiting for a reply")
        on_reply(reply)
        if self._close_after or reply.code in CLOSING_CODES:
            self.state = State.CLOSED
        data = reply.to_bytes()
        # RFC 4954 §4: continue-req = "334" SP [base64] CRLF; Reply drops the trailing space.
        return b"334 \r\n" if data == b"334\r\n" else data

    def close(self, reply: Reply) -> bytes:
        """An unsolicited closing reply (421 on timeout or shutdown, RFC 5321 §3.8).

        Allowed at any time, even while an event waits for its reply; ends the session.
        """
        self._on_reply = None
        self.state = State.CLOSED
        return reply.to_bytes()

    @property
    def buffered(self) -> int:
        """Received bytes held in memory: unread input plus the message being read."""
        reader = self._reader
        return len(self._lines.data) + (reader.held if reader is not None else 0)

    def tls_started(self) -> None:
        """The TLS handshake after STARTTLS succeeded."""
        if self.state is not State.TLS:
            raise SmtpUsageError("tls_started() without an accepted STARTTLS")
        # RFC 3207 §4.2: forget everything learned before TLS; the client says EHLO again.
        self.tls_active = True
        self.authenticated = False
        self.ehlo_name = None
        self._reset_transaction()
        self.state = State.INIT

    def ehlo_keywords(self) -> list[str]:
        """The EHLO extensions for the current state (RFC 5321 §4.1.1.1)."""
        keywords = ["PIPELINING", f"SIZE {self.limits.max_message_size}"]
        if self.tls_available and not self.tls_active:
            keywords.append("STARTTLS")  # RFC 3207 §4.2: not again once under TLS
        if self._auth_offered():
            keywords.append("AUTH PLAIN LOGIN")
        keywords += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]
        return keywords

    def ehlo_reply(self, event: Ehlo, keywords: Sequence[str] | None = None) -> Reply:
        """The 250 reply to ``event``; keywords default to ``ehlo_keywords()``."""
        text = f"{self.hostname} greets {event.name}"
        if not event.extended:
            return Reply(250, None, text)
        return Reply(250, None, text, tuple(self.ehlo_keywords() if keywords is None else keywords))

    # ---- reply bookkeeping -----------------------------------------------------------

    def _after_greeting(self, reply: Reply) -> None:
        # RFC 5321 §3.1 / RFC 7504: 554 or 521 instead of 220 refuses the session.
        self.state = State.INIT if reply.code == 220 else State.CLOSED

    def _await(self, event: Event, cmd: Cmd, effect: Callable[[], None] | None = None) -> Event:
        """Arm the transition of ``cmd`` from the current state, applied on success."""
        target = TRANSITIONS[(self.state, cmd)]
        success = SUCCESS_CODE.get(cmd)

        def on_reply(reply: Reply) -> None:
            if reply.code == success or (success is None and 200 <= reply.code < 300):
                self.state = target
                if effect is not None:
                    effect()
            elif cmd in _COUNTED_REFUSALS and reply.code >= 400:
                self.errors += 1  # e.g. 3,000 RCPTs to unknown users: closed after max_errors

        self._on_reply = on_reply
        return event

    def _error(
        self, reply: Reply, *, count: bool = True, close: bool = False, then: State | None = None
    ) -> ProtocolError:
        """A ProtocolError event; ``then`` is the state after it (default: unchanged)."""
        if count:
            self.errors += 1
            if self.errors > self.limits.max_errors:
                reply, close = TOO_MANY_ERRORS, True

        def on_reply(_: Reply) -> None:
            if then is not None:
                self.state = then
            self._close_after = self._close_after or close

        self._on_reply = on_reply
        return ProtocolError(reply, close)

    def _closed(self) -> ConnectionClosed:
        self.state = State.CLOSED
        return ConnectionClosed()

    def _reset_transaction(self) -> None:
        self.recipients = 0
        self.message_limit = None
        self._smtputf8 = False

    def _auth_offered(self) -> bool:
        return self.auth_enabled and not self.authenticated and (self.tls_active or not self.require_tls_for_auth)

    # ---- commands --------------------------------------------------------------------

    def _next_command(self) -> Event | NeedData:
        line = self._lines.next_line(self.limits.max_command_line)
        if line is None:
            return self._closed() if self._lines.eof else NEED_DATA
        if line is TOO_LONG:  # §4.5.3.1.4
            return self._error(Reply(500, "5.5.6", "command line too long"))
        text = self._decode(line)
        if isinstance(text, ProtocolError):
            return text
        verb, _, arg = text.partition(" ")
        verb, arg = verb.upper(), arg.strip()
        cmd = _VERBS.get(verb)
        if cmd is None:
            return self._unknown(verb)
        refusal = self._refuse(cmd)
        if refusal is not None:
            return refusal
        if cmd in JUNK_COMMANDS:
            self.junk += 1
            if self.junk > self.limits.max_junk_commands:
                self.errors += 1
                if self.errors > self.limits.max_errors:
                    return self._error(TOO_MANY_ERRORS, count=False, close=True)
        return self._command(cmd, arg)

    def _decode(self, line: bytes) -> str | ProtocolError:
        # §2.3.8: a line ends in CRLF; a bare CR or LF is never accepted.
        if not line.endswith(b"\r\n") or line.count(b"\r") != 1:
            return self._error(Reply(500, "5.5.2", "bare CR or LF in command, use CRLF"))
        try:
            return line[:-2].decode("utf-8")  # UTF-8 for SMTPUTF8 (RFC 6531 §3.3)
        except UnicodeDecodeError:
            return self._error(Reply(500, "5.5.2", "command is not valid UTF-8"))

    def _unknown(self, verb: str) -> ProtocolError:
        if verb in _FORBIDDEN:
            return self._error(Reply(421, "4.7.0", "not an SMTP command, closing"), close=True)
        if verb in _NOT_IMPLEMENTED:
            return self._error(Reply(502, "5.5.1", "command not implemented"))
        return self._error(Reply(500, "5.5.2", "command not recognized"))

    def _refuse(self, cmd: Cmd) -> ProtocolError | None:
        """Commands not offered (502) or out of sequence (503)."""
        if (cmd is C.STARTTLS and not self.tls_available) or (cmd is C.AUTH and not self.auth_enabled):
            return self._error(Reply(502, "5.5.1", "command not implemented"))
        if (self.state, cmd) in TRANSITIONS:
            return None
        if self.state is S.INIT:
            hint = "send EHLO or HELO first"
        elif cmd is C.MAIL:
            hint = "nested MAIL command"
        elif cmd is C.RCPT:
            hint = "need MAIL before RCPT"
        elif cmd is C.DATA:
            hint = "no valid recipients" if self.state is S.MAIL else "need MAIL before DATA"
        else:
            hint = f"{cmd.value} not permitted during a mail transaction"
        return self._error(Reply(503, "5.5.1", hint))

    def _command(self, cmd: Cmd, arg: str) -> Event:
        match cmd:
            case C.EHLO | C.HELO:
                return self._cmd_ehlo(cmd, arg)
            case C.STARTTLS:
                return self._cmd_starttls(arg)
            case C.AUTH:
                return self._cmd_auth(arg)
            case C.MAIL:
                return self._cmd_mail(arg)
            case C.RCPT:
                return self._cmd_rcpt(arg)
            case C.NOOP:  # §4.1.1.9: NOOP [SP String]
                return self._await(Noop(), cmd)
            case C.VRFY:
                return self._await(Vrfy(arg), cmd) if arg else self._syntax("VRFY <address>")
            case C.HELP:
                return self._await(Help(arg), cmd)
        if arg:  # DATA, RSET and QUIT take no argument
            return self._syntax(cmd.value)
        match cmd:
            case C.DATA:
                return self._await(Data(), cmd, self._start_data)
            case C.RSET:
                return self._await(Rset(), cmd, self._reset_transaction)
        return self._await(Quit(), cmd)

    def _syntax(self, usage: str) -> ProtocolError:
        return self._error(Reply(501, "5.5.4", f"syntax: {usage}"))

    def _cmd_ehlo(self, cmd: Cmd, arg: str) -> Event:
        if not arg:
            return self._syntax(f"{cmd.value} <domain or address literal>")
        name = arg.split()[0]

        def greeted() -> None:
            self.ehlo_name = name
            self._reset_transaction()  # §4.1.4: EHLO ends any transaction

        return self._await(Ehlo(name, cmd is C.EHLO), cmd, greeted)

    def _cmd_starttls(self, arg: str) -> Event:
        if self.tls_active:
            return self._error(Reply(503, "5.5.1", "TLS already active"))
        if arg:
            return self._syntax("STARTTLS")  # RFC 3207 §4: no parameters
        if self._lines.data:
            # CVE-2011-0411: plaintext pipelined after STARTTLS would be taken as if it
            # came through TLS. Refuse the session rather than guess.
            return self._error(Reply(554, "5.5.0", "no commands allowed after STARTTLS"), close=True)
        return self._await(StartTls(), C.STARTTLS)

    def _cmd_mail(self, arg: str) -> Event:
        if self.require_auth and not self.authenticated:
            return self._error(Reply(530, "5.7.0", "authentication required"))  # RFC 4954 §6
        try:
            env = parse_mail(arg, max_size=self.limits.max_message_size)
        except ArgumentError as exc:
            return self._error(exc.reply, count=exc.reply.code in (500, 501))
        smtputf8 = "SMTPUTF8" in env.params

        def opened() -> None:
            self._reset_transaction()
            self._smtputf8 = smtputf8

        return self._await(MailFrom(env.address, env.params), C.MAIL, opened)

    def _cmd_rcpt(self, arg: str) -> Event:
        try:
            env = parse_rcpt(arg, smtputf8=self._smtputf8)
        except ArgumentError as exc:
            return self._error(exc.reply, count=exc.reply.code in (500, 501))
        if self.recipients >= self.limits.max_recipients:
            # §4.5.3.1.10: 452 tells the client to send the rest in another transaction.
            return self._error(Reply(452, "4.5.3", "too many recipients"), count=False)

        def added() -> None:
            self.recipients += 1

        return self._await(RcptTo(env.address, env.params), C.RCPT, added)

    # ---- DATA ------------------------------------------------------------------------

    def _start_data(self) -> None:
        size = self.limits.max_message_size
        if self.message_limit is not None:
            size = min(size, self.message_limit)
        self._reader = DataReader(max_size=size, max_line=self.limits.max_text_line)

    def _next_data(self) -> Event | NeedData:
        reader = self._reader
        assert reader is not None
        if not reader.consume(self._lines.data):
            return self._closed() if self._lines.eof else NEED_DATA
        self._reader = None
        event = reader.result()
        # §4.1.1.4: the transaction ends with the final dot, whatever the reply.
        self._reset_transaction()
        if isinstance(event, ProtocolError):
            return self._error(event.reply, count=reader.bare, then=S.READY)
        self._on_reply = self._to_ready
        return event

    def _to_ready(self, reply: Reply) -> None:
        self.state = S.READY
        if 200 <= reply.code < 300:  # mail delivered: the client is doing real work (as Postfix resets)
            self.errors = self.junk = 0

    # ---- AUTH (RFC 4954, PLAIN RFC 4616, LOGIN draft-murchison-sasl-login) -----------

    def _cmd_auth(self, arg: str) -> Event:
        if self.authenticated:
            return self._error(Reply(503, "5.5.1", "already authenticated"))  # RFC 4954 §4
        if self.require_tls_for_auth and not self.tls_active:
            return self._error(Reply(530, "5.7.0", "must issue STARTTLS first"))
        mechanism, _, initial = arg.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip()
        if not mechanism or " " in initial:
            return self._syntax("AUTH mechanism [initial-response]")
        if mechanism == "PLAIN":
            if initial:
                return self._sasl_plain(initial)
            return self._challenge("PLAIN", "", self._sasl_plain)
        if mechanism == "LOGIN":
            if initial:
                return self._sasl_user(initial)
            return self._challenge("LOGIN", _LOGIN_USER, self._sasl_user)
        return self._error(Reply(504, "5.5.4", "unrecognized authentication type"))

    def _challenge(self, mechanism: str, text: str, step: _SaslStep) -> Event:
        def on_reply(reply: Reply) -> None:
            if reply.code == 334:
                self.state = S.AUTH
                self._sasl_step = step

        self._on_reply = on_reply
        return AuthChallenge(mechanism, Reply(334, None, text))

    def _next_sasl(self) -> Event | NeedData:
        line = self._lines.next_line(self.limits.max_auth_line)
        if line is None:
            return self._closed() if self._lines.eof else NEED_DATA
        # A response line ends this step; a further challenge re-enters State.AUTH.
        self.state = S.READY
        step, self._sasl_step = self._sasl_step, None
        assert step is not None
        if line is TOO_LONG:
            return self._error(Reply(500, "5.5.6", "authentication line too long"))
        text = self._decode(line)
        if isinstance(text, ProtocolError):
            return text
        if text.strip() == "*":  # RFC 4954 §4: the client cancels
            return self._error(Reply(501, "5.0.0", "authentication cancelled"))
        return step(text.strip())

    def _sasl_plain(self, response: str) -> Event:
        decoded = _b64decode(response)
        parts = decoded.split("\0") if decoded is not None else []
        if len(parts) != 3 or not parts[1]:
            return self._auth_error("invalid PLAIN response")
        authzid, username, password = parts
        return self._credentials(Credentials("PLAIN", username, password, authzid))

    def _sasl_user(self, response: str) -> Event:
        username = _b64decode(response)
        if not username:
            return self._auth_error("invalid LOGIN username")
        return self._challenge("LOGIN", _LOGIN_PASS, lambda r: self._sasl_password(username, r))

    def _sasl_password(self, username: str, response: str) -> Event:
        password = _b64decode(response)
        if password is None:
            return self._auth_error("invalid LOGIN password")
        return self._credentials(Credentials("LOGIN", username, password))

    def _auth_error(self, text: str) -> ProtocolError:
        return self._error(Reply(501, "5.5.2", f"{text} (bad base64 or encoding)"))

    def _credentials(self, event: Credentials) -> Credentials:
        def on_reply(reply: Reply) -> None:
            self.state = S.READY
            if 200 <= reply.code < 300:
                self.authenticated = True
            elif reply.code == 535:
                self.errors += 1  # failed logins spend the error budget too

        self._on_reply = on_reply
        return event


def _b64decode(text: str) -> str | None:
    """Base64 of UTF-8 text, or None. RFC 4954 §4: "=" stands for an empty response."""
    if text == "=":
        return ""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True).decode("utf-8")
    except (UnicodeError, binascii.Error):
        return None
