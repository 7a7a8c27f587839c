"""The SMTP client protocol as a pure state machine (h11 style): commands in, bytes out; bytes in, replies out.

The client-side twin of ``relay.smtp.core``; never imports trio, socket, ssl or asyncio. The I/O layer
(``relay.smtp.client``) owns sockets, TLS and timeouts. Use::

    conn = ClientConnection()
    conn.receive_data(b"220 mx.example ESMTP\\r\\n")      # b"" = EOF
    conn.next_reply()                # Answer(Cmd.GREETING, Reply(220, ...)); state GREETED
    out = conn.ehlo("relay.example")
    ...                              # Answer(Cmd.EHLO, 250 ...): conn.extensions.pipelining, .size ...
    out = conn.mail("a@x.example", {"SIZE": "1234"}) + conn.rcpt("b@y.example") + conn.data()
    # three replies; once DATA got 354:
    out = conn.message(raw_bytes)    # CRLF line ends, dot-stuffed, CRLF.CRLF at the end

Every command goes into ``pending`` and is answered by exactly one reply, in order (RFC 2920 §3.1:
replies to pipelined commands come in the order of the commands). The state moves on the reply, as the
one table ``TRANSITIONS`` says (MAIL moves to ``MAIL`` only on 2xx, DATA to ``DATA`` only on 354, ...).
Commands may be sent before earlier ones are answered only when the server offered PIPELINING and the
earlier ones may start a group (RFC 2920 §3.1: EHLO, DATA, NOOP, QUIT and STARTTLS end a group).
A reply that is not RFC 5321 §4.2 syntax raises ``ReplySyntaxError``; misuse raises ``SmtpUsageError``.
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.smtp.core import SmtpUsageError
from relay.smtp.events import NEED_DATA, ConnectionClosed, NeedData
from relay.smtp.lines import TOO_LONG, LineBuffer, ReplySyntaxError, parse_reply_lines, reply_complete
from relay.smtp.reply import Reply

__all__ = [
    "MAX_REPLY_LINE",
    "MAX_REPLY_LINES",
    "TRANSITIONS",
    "Answer",
    "ClientConnection",
    "ClientState",
    "Cmd",
    "Extensions",
    "ReplySyntaxError",
    "SmtpUsageError",
    "dot_stuff",
    "is_8bit",
    "mail_params",
    "normalize_newlines",
]

#: §4.5.3.1.5 says 512 octets per reply line; real servers send longer text, so be lenient.
MAX_REPLY_LINE = 4096
#: An EHLO reply has a line per extension; anything near this many lines is not SMTP.
MAX_REPLY_LINES = 200


class ClientState(enum.Enum):
    __hash__ = object.__hash__

    CONNECTED = "connected"  # waiting for the greeting
    GREETED = "greeted"  # 220 received (or TLS just started): EHLO/HELO expected
    REFUSED = "refused"  # the greeting was not 220 (§3.1: 554): only QUIT is left
    READY = "ready"  # after EHLO/HELO: no mail transaction
    TLS = "tls"  # 220 to STARTTLS: the I/O layer runs the handshake, then tls_started()
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted
    DATA = "data"  # 354 received: the message is expected
    CLOSED = "closed"


class Cmd(enum.Enum):
    __hash__ = object.__hash__

    GREETING = "greeting"  # not a command: the server speaks first (§3.1)
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    MESSAGE = "message"  # the message content and the final dot (§4.1.1.4)
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


S, C = ClientState, Cmd
_SESSION = (S.READY, S.MAIL, S.RCPT)

#: (state, command) -> state after a successful reply. A pair that is absent may not be sent.
#: RFC 5321 §4.1.4 (order of commands), §3.3 (a transaction), RFC 3207 §4 (STARTTLS).
TRANSITIONS: dict[tuple[ClientState, Cmd], ClientState] = {
    **{(s, c): S.READY for s in (S.GREETED, *_SESSION) for c in (C.EHLO, C.HELO)},
    **{(s, C.NOOP): s for s in (S.GREETED, *_SESSION)},
    **{(s, C.QUIT): S.CLOSED for s in (S.GREETED, S.REFUSED, *_SESSION)},
    (S.GREETED, C.RSET): S.GREETED,
    **{(s, C.RSET): S.READY for s in _SESSION},
    (S.READY, C.STARTTLS): S.TLS,
    (S.READY, C.MAIL): S.MAIL,
    (S.MAIL, C.RCPT): S.RCPT,
    (S.RCPT, C.RCPT): S.RCPT,
    (S.RCPT, C.DATA): S.DATA,
    (S.DATA, C.MESSAGE): S.READY,
}

#: Commands whose success is one specific code; for the others any 2xx.
SUCCESS_CODE = {C.GREETING: 220, C.STARTTLS: 220, C.DATA: 354, C.QUIT: 221}

#: RFC 2920 §3.1: commands that may be followed by more commands before their reply arrives
#: (MESSAGE too: "the transfer of message content is explicitly allowed to be the first command in a
#: group", so the next MAIL, RSET or QUIT may follow the final dot).
PIPELINABLE = frozenset({C.MAIL, C.RCPT, C.RSET, C.MESSAGE})

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")  # §4.1.1.1 ehlo-keyword
_REPLY_START = re.compile(r"[2-5][0-9][0-9](?:[ -]|\Z)")  # §4.2: Reply-code [ SP / "-" textstring ]


@dataclass(frozen=True, slots=True)
class Extensions:
    """The service extensions from an EHLO reply (RFC 5321 §4.1.1.1), keywords upper-cased."""

    keywords: Mapping[str, str] = field(default_factory=dict)  # keyword -> its parameters ("" if none)

    @classmethod
    def from_reply(cls, reply: Reply) -> Extensions:
        keywords: dict[str, str] = {}
        for line in reply.lines:  # the first line is the greeting text, not an extension
            keyword, _, params = line.strip().partition(" ")
            if _KEYWORD.match(keyword):
                keywords.setdefault(keyword.upper(), params.strip())
        return cls(keywords)

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and keyword.upper() in self.keywords

    @property
    def size(self) -> int | None:
        """RFC 1870 §4: the server's fixed maximum size; None when SIZE is not offered, 0 for no limit."""
        if "SIZE" not in self.keywords:
            return None
        value = self.keywords["SIZE"]
        return int(value) if value.isascii() and value.isdigit() else 0

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords

    @property
    def enhancedstatuscodes(self) -> bool:
        return "ENHANCEDSTATUSCODES" in self.keywords


@dataclass(frozen=True, slots=True)
class Answer:
    """One reply and the command it answers."""

    command: Cmd
    reply: Reply


@dataclass(frozen=True, slots=True)
class _Pending:
    command: Cmd
    target: ClientState  # the state on success


class ClientConnection:
    """One client-side SMTP session (see the module docstring)."""

    def __init__(self, *, max_reply_line: int = MAX_REPLY_LINE, max_reply_lines: int = MAX_REPLY_LINES) -> None:
        self.max_reply_line = max_reply_line
        self.max_reply_lines = max_reply_lines
        self.state = ClientState.CONNECTED
        self.extensions = Extensions()
        self.extended = False  # the session was opened with EHLO (not HELO)
        self.tls_active = False
        self.accepted = 0  # RCPTs accepted in the current transaction
        self._utf8 = False  # the last MAIL carried SMTPUTF8
        self._lines = LineBuffer()
        self._reply_lines: list[str] = []
        self._pending: deque[_Pending] = deque([_Pending(C.GREETING, S.GREETED)])

    # ---- bytes in, replies out -------------------------------------------------------

    @property
    def pending(self) -> tuple[Cmd, ...]:
        """Commands sent and not yet answered, oldest first."""
        return tuple(p.command for p in self._pending)

    @property
    def unread(self) -> bool:
        """Received input (or the end of it) that ``next_reply`` has not returned yet."""
        return bool(self._lines.data or self._reply_lines or self._lines.eof)

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed received bytes; ``b""`` means the server closed its side."""
        if self.state is ClientState.TLS:
            # RFC 3207 §4.2 / CVE-2011-0411: anything after the 220 belongs to the TLS layer.
            raise SmtpUsageError("bytes after STARTTLS must go to the TLS handshake")
        if not self._lines.eof:
            self._lines.feed(data)

    def next_reply(self) -> Answer | NeedData | ConnectionClosed:
        """The next complete reply, NEED_DATA, or ConnectionClosed at EOF (or once CLOSED).

        Raises ``ReplySyntaxError`` for a malformed reply, or for a reply nobody asked for.
        """
        while True:
            line = self._lines.next_line(self.max_reply_line)
            if line is None:
                if self._lines.eof or self.state is ClientState.CLOSED:
                    self.state = ClientState.CLOSED
                    return ConnectionClosed()
                return NEED_DATA
            if line is TOO_LONG:
                raise ReplySyntaxError(f"reply line longer than {self.max_reply_line} octets")
            # Lenient on input: a bare LF ends a reply line as well as CRLF does.
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            if not _REPLY_START.match(text):
                # Caught line by line: garbage may never contain what looks like a last line.
                raise ReplySyntaxError(f"bad reply line {text[:80]!r}")
            self._reply_lines.append(text)
            if len(self._reply_lines) > self.max_reply_lines:
                raise ReplySyntaxError(f"reply of more than {self.max_reply_lines} lines")
            if reply_complete(text):
                lines, self._reply_lines = self._reply_lines, []
                return self._answer(parse_reply_lines(lines))

    def _answer(self, reply: Reply) -> Answer:
        if not self._pending:
            raise ReplySyntaxError(f"unexpected reply {str(reply)!r} (no command pending)")
        pending = self._pending.popleft()
        cmd = pending.command
        success = SUCCESS_CODE.get(cmd)
        ok = reply.code == success if success is not None else 200 <= reply.code < 300
        if ok:
            self.state = pending.target
            if cmd is C.STARTTLS and self._lines.data:
                # RFC 3207 §5 / "STARTTLS response injection": bytes sent in clear after the 220 would be
                # read as if they came through TLS. Nothing trustworthy can follow: give up.
                self.state = S.CLOSED
                raise ReplySyntaxError("data after the 220 reply to STARTTLS (response injection?)")
            if cmd is C.EHLO or cmd is C.HELO:
                self.extended = cmd is C.EHLO
                self.extensions = Extensions.from_reply(reply) if self.extended else Extensions()
                self.accepted = 0  # §4.1.4: EHLO ends any transaction
            elif cmd is C.MAIL or cmd is C.RSET or cmd is C.MESSAGE:
                self.accepted = 0
            elif cmd is C.RCPT:
                self.accepted += 1
        elif cmd is C.GREETING:
            self.state = S.REFUSED  # §3.1: 554 (or 521) instead of 220; the client says QUIT
        elif cmd is C.MESSAGE:
            self.state, self.accepted = S.READY, 0  # §4.1.1.4: the transaction ends whatever the reply
        if reply.code == 421 or cmd is C.QUIT:
            # §3.8: 421 means the server is closing the channel; after QUIT it closes too.
            self.state = S.CLOSED
            self._pending.clear()
        return Answer(cmd, reply)

    # ---- commands in, bytes out ------------------------------------------------------

    def ehlo(self, name: str) -> bytes:
        return self._command(C.EHLO, f"EHLO {_arg(name)}")

    def helo(self, name: str) -> bytes:
        """RFC 5321 §4.1.1.1: the fallback when EHLO gets a 5xx reply (the server predates ESMTP)."""
        return self._command(C.HELO, f"HELO {_arg(name)}")

    def starttls(self) -> bytes:
        if self.tls_active:
            raise SmtpUsageError("TLS is already active")
        return self._command(C.STARTTLS, "STARTTLS")

    def tls_started(self) -> None:
        """The TLS handshake after the 220 to STARTTLS succeeded."""
        if self.state is not ClientState.TLS:
            raise SmtpUsageError("tls_started() without an accepted STARTTLS")
        # RFC 3207 §4.2: discard what the server said before TLS; EHLO again.
        self.tls_active = True
        self.extensions = Extensions()
        self.extended = False
        self.state = ClientState.GREETED

    def mail(self, address: str, params: Mapping[str, str] | None = None) -> bytes:
        """``MAIL FROM:<address> [KEY=VALUE ...]``; "" is the null reverse-path ``<>``."""
        smtputf8 = "SMTPUTF8" in (params or {})
        out = self._command(C.MAIL, f"MAIL FROM:<{_path(address, smtputf8)}>{_params(params)}")
        self._utf8 = smtputf8  # RCPT may carry UTF-8 addresses in this transaction
        return out

    def rcpt(self, address: str, params: Mapping[str, str] | None = None) -> bytes:
        if not address:
            raise SmtpUsageError("RCPT needs an address")
        return self._command(C.RCPT, f"RCPT TO:<{_path(address, self._utf8)}>{_params(params)}")

    def data(self) -> bytes:
        return self._command(C.DATA, "DATA")

    def message(self, data: bytes) -> bytes:
        """The message after 354, ready for the wire: see ``dot_stuff``."""
        if self.state is not ClientState.DATA or self._pending:
            raise SmtpUsageError("the message may only follow a 354 reply to DATA")
        self._pending.append(_Pending(C.MESSAGE, S.READY))
        return dot_stuff(data)

    def rset(self) -> bytes:
        return self._command(C.RSET, "RSET")

    def noop(self) -> bytes:
        return self._command(C.NOOP, "NOOP")

    def quit(self) -> bytes:
        return self._command(C.QUIT, "QUIT")

    # ---- internals -------------------------------------------------------------------

    @property
    def _expected(self) -> ClientState:
        """The state once every pending command has succeeded (what a new command follows)."""
        return self._pending[-1].target if self._pending else self.state

    def _command(self, cmd: Cmd, line: str) -> bytes:
        if self._pending:
            last = self._pending[-1].command
            if last is C.GREETING:
                raise SmtpUsageError("wait for the greeting before the first command (§3.1)")
            if not self.extensions.pipelining or last not in PIPELINABLE:
                raise SmtpUsageError(f"{cmd.value} before the reply to {last.value} (no PIPELINING)")
        state = self._expected
        target = TRANSITIONS.get((state, cmd))
        if target is None:
            raise SmtpUsageError(f"{cmd.value} not allowed in state {state.value}")
        self._pending.append(_Pending(cmd, target))
        return line.encode("utf-8") + b"\r\n"


def _arg(text: str) -> str:
    if not text or any(ch in text for ch in " \r\n\0"):
        raise SmtpUsageError(f"bad command argument {text!r}")
    return text


def _path(address: str, smtputf8: bool) -> str:
    # A CR or LF here would let the caller inject commands; ">" or a space would end the path.
    if any(ch in address for ch in "\r\n\0<> "):
        raise SmtpUsageError(f"bad address {address!r}")
    if not address.isascii() and not smtputf8:
        raise SmtpUsageError("a non-ASCII address needs SMTPUTF8 (RFC 6531 §3.4)")
    return address


def _params(params: Mapping[str, str] | None) -> str:
    out = []
    for key, value in (params or {}).items():
        if not _KEYWORD.match(key) or any(ch in value for ch in " =\r\n\0"):
            raise SmtpUsageError(f"bad parameter {key}={value!r}")
        out.append(f" {key}={value}" if value else f" {key}")
    return "".join(out)


# ---- message content ---------------------------------------------------------------------------


def normalize_newlines(data: bytes) -> bytes:
    """Every line end as CRLF (RFC 5321 §2.3.8), and the message ending in CRLF.

    A bare LF and a bare CR each become CRLF: sending either on would let the next hop read the
    line ends differently than we do (SMTP smuggling).
    """
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\n") or crlf != data.count(b"\r"):
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data


def dot_stuff(data: bytes) -> bytes:
    """The message as sent after 354 (RFC 5321 §4.5.2): CRLF line ends (``normalize_newlines``),
    a "." doubled at the start of every line, and the terminating ``.CRLF``."""
    data = normalize_newlines(data)
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def is_8bit(data: bytes) -> bool:
    """True when the message holds octets above 127 (RFC 6152 8BITMIME)."""
    return not data.isascii()


def mail_params(
    extensions: Extensions, *, size: int, body_8bit: bool = False, smtputf8: bool = False
) -> dict[str, str] | Reply:
    """The MAIL parameters for a message of ``size`` octets, or the local refusal to report.

    - SIZE=n when the server offers SIZE (RFC 1870 §6); a message over its limit is refused here,
      permanently, as the server would (552 5.3.4, RFC 1870 §6.1).
    - SMTPUTF8 when needed and offered; needed but not offered: 553 5.6.7 (RFC 6531 §3.4, §3.5).
    - BODY=8BITMIME for 8-bit content when offered (RFC 6152 §3); when not offered the message goes
      as it is, as Postfix does without MIME downgrade.
    ``size`` is the message with CRLF line ends, before dot-stuffing (RFC 1870 §4).
    """
    params: dict[str, str] = {}
    limit = extensions.size
    if limit is not None:
        if 0 < limit < size:
            return Reply(552, "5.3.4", f"message size {size} exceeds size limit {limit} of server")
        params["SIZE"] = str(size)
    if (body_8bit or smtputf8) and extensions.eightbitmime:
        params["BODY"] = "8BITMIME"
    if smtputf8:
        if not extensions.smtputf8:
            return Reply(553, "5.6.7", "SMTPUTF8 is required, but was not offered by the server")
        params["SMTPUTF8"] = ""
    return params
