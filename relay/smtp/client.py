"""The Trio SMTP client: connect, EHLO, STARTTLS, one or more transactions, QUIT.

Thin by design: the dialogue lives in ``relay.smtp.clientcore`` (pure); this module moves bytes, runs
the TLS handshake and applies the RFC 5321 §4.5.3.2 timeouts. Use::

    client = await open_smtp("192.0.2.25", 25, helo_name="relay.example", tls=TlsPolicy.OPPORTUNISTIC,
                             timeouts=ClientTimeouts(), tls_server_name="mx.example.net")
    result = await client.send_message("bounce@relay.example", ["a@example.net"], data)
    result.mail, result.rcpt["a@example.net"], result.data     # the server's replies, verbatim
    await client.reset()          # RSET, before reusing the connection for the next message
    await client.quit()

Errors, all temporary unless said otherwise; ``text`` is the line for a message's "last reply"::

    SmtpError                 .text, .reply (the server's, or one made up here), .temporary, .settled
    ├── SmtpConnectError      cannot connect, or the connection was lost mid-dialogue
    ├── SmtpTimeout           a §4.5.3.2 timeout expired (the connection is closed)
    ├── SmtpProtocolError     the server's reply was not SMTP
    ├── SmtpTlsError          TLS required (TlsPolicy.VERIFY) but not offered, refused or unverified
    └── SmtpReplyError        the server refused the session (greeting, EHLO/HELO): temporary on 4xx only

A transaction's own replies (MAIL/RCPT/DATA refusals) are not errors: they are in the
``TransactionResult``. TLS (``TlsPolicy``): OPPORTUNISTIC uses STARTTLS when offered, does not verify
the certificate (MX certificates rarely match, RFC 7435), requires TLS 1.2+, and when the handshake fails
connects to the same host once more in clear text (Postfix ``smtp_tls_security_level = may``).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import select
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import NoReturn

import trio

from relay.smtp.clientcore import (
    TRANSITIONS,
    Answer,
    ClientConnection,
    ClientState,
    Cmd,
    Extensions,
    ReplySyntaxError,
    is_8bit,
    mail_params,
    normalize_newlines,
)
from relay.smtp.events import NEED_DATA
from relay.smtp.reply import Reply

__all__ = [
    "ClientTimeouts",
    "PeerCheck",
    "SmtpClient",
    "SmtpConnectError",
    "SmtpError",
    "SmtpProtocolError",
    "SmtpReplyError",
    "SmtpStaleConnection",
    "SmtpTimeout",
    "SmtpTlsError",
    "TlsPolicy",
    "TransactionResult",
    "open_smtp",
]

log = logging.getLogger("relay.smtp.client")

RECEIVE_SIZE = 65536
#: The message is written in blocks, each under the §4.5.3.2.5 data block timeout.
SEND_BLOCK = 256 * 1024


class TlsPolicy(enum.Enum):
    """What the client does about STARTTLS (Postfix ``smtp_tls_security_level``)."""

    OPPORTUNISTIC = "may"  # STARTTLS when offered, unverified; clear text when the handshake fails
    VERIFY = "verify"  # STARTTLS required, certificate verified for tls_server_name; else temporary failure
    NONE = "none"  # never STARTTLS


#: Called after a TLS handshake with the server's certificate chain as sent (DER, leaf first); returns
#: why the peer is not acceptable, or None. DANE (RFC 7672 §3) authenticates this way instead of PKIX.
PeerCheck = Callable[[list[bytes]], str | None]


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """Seconds; the defaults are RFC 5321 §4.5.3.2's minimums (and Postfix's for the rest)."""

    connect: float = 30.0  # Postfix smtp_connect_timeout
    greeting: float = 300.0  # §4.5.3.2.1 initial 220
    helo: float = 300.0  # EHLO/HELO (Postfix smtp_helo_timeout)
    starttls: float = 300.0  # STARTTLS reply and the handshake (Postfix smtp_starttls_timeout)
    mail: float = 300.0  # §4.5.3.2.2
    rcpt: float = 300.0  # §4.5.3.2.3
    data_init: float = 120.0  # §4.5.3.2.4: the 354
    data_block: float = 180.0  # §4.5.3.2.5: each block of the message written
    data_final: float = 600.0  # §4.5.3.2.6: the reply to the final dot
    rset: float = 20.0  # Postfix smtp_rset_timeout
    quit: float = 300.0  # Postfix smtp_quit_timeout


# ---- errors ---------------------------------------------------------------------------------------


class SmtpError(Exception):
    """A session or transaction that could not go on (see the module docstring).

    ``reply`` is the server's reply when one caused the failure, else a local one with an RFC 3463
    code; ``settled`` holds recipients whose RCPT had already been refused (their final answer) when a
    transaction failed half-way.
    """

    local_reply = Reply(451, "4.4.0", "delivery failed")

    def __init__(self, text: str, *, reply: Reply | None = None, enhanced: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.from_server = reply is not None
        local = Reply(self.local_reply.code, enhanced or self.local_reply.enhanced, text)
        self.reply = reply if reply is not None else local
        self.settled: dict[str, Reply] = {}

    @property
    def temporary(self) -> bool:
        return not self.reply.is_permanent


class SmtpConnectError(SmtpError):
    local_reply = Reply(451, "4.4.1", "")  # RFC 3463 X.4.1 no answer from host (X.4.2 when lost)


class SmtpTimeout(SmtpError):
    local_reply = Reply(451, "4.4.2", "")  # X.4.2 bad connection


class SmtpProtocolError(SmtpError):
    local_reply = Reply(451, "4.5.0", "")  # X.5.0 other protocol status


class SmtpTlsError(SmtpError):
    """``result_type`` names the failure as TLS reports do (RFC 8460 §4.3.2.1-2)."""

    local_reply = Reply(451, "4.7.5", "")  # X.7.5 cryptographic failure (X.7.4: not offered)

    def __init__(self, text: str, *, reply: Reply | None = None, enhanced: str | None = None,
                 result_type: str = "validation-failure") -> None:
        super().__init__(text, reply=reply, enhanced=enhanced)
        self.result_type = result_type

    @property
    def temporary(self) -> bool:
        return True  # a TLS requirement is ours, not the recipient's: never bounce for it


class SmtpReplyError(SmtpError):
    """The server refused the session (greeting, EHLO and HELO, STARTTLS under VERIFY): ``reply`` is its."""


class SmtpStaleConnection(SmtpConnectError):
    """A reused connection failed its RSET, sent ahead of the transaction (``defer_reset``): the server
    answered nothing of the transaction and no message content was sent, so it may go to a new connection."""


# ---- results --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """The server's replies to one transaction, verbatim.

    ``mail``: the MAIL reply, or a local refusal (``local`` True; nothing was sent): 552 5.3.4 over the
    server's SIZE, 553 5.6.7 when SMTPUTF8 is needed and not offered. ``rcpt``: per recipient its RCPT
    reply, complete whenever ``mail`` was positive (recipients left unanswered because the server closed
    with 421 get that 421). ``data``: the reply to the final dot, or the DATA command's refusal; None
    when no recipient was accepted. ``outcome(rcpt)`` picks the reply that decides a recipient.
    """

    mail: Reply
    rcpt: dict[str, Reply] = field(default_factory=dict)
    data: Reply | None = None
    recipients: tuple[str, ...] = ()
    local: bool = False

    def outcome(self, rcpt: str) -> Reply:
        """MAIL's reply if refused, else its RCPT reply if refused, else the DATA reply."""
        if not self.mail.is_positive:
            return self.mail
        reply = self.rcpt.get(rcpt, self.mail)
        if not reply.is_positive or self.data is None:
            return reply
        return self.data

    def replies(self) -> dict[str, Reply]:
        """``outcome`` for every recipient."""
        return {rcpt: self.outcome(rcpt) for rcpt in self.recipients}


# ---- TLS contexts ---------------------------------------------------------------------------------


@functools.cache
def opportunistic_context() -> ssl.SSLContext:
    """Unverified (RFC 7435 opportunistic security: MX certificates rarely match), TLS 1.2 or newer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@functools.cache
def verify_context() -> ssl.SSLContext:
    """The system's trust store, hostname checked, TLS 1.2 or newer."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _peer_chain(tls: trio.SSLStream[trio.abc.Stream]) -> list[bytes]:
    """The certificates the server sent, leaf first, as DER (RFC 7672 §3.1.2 needs the whole chain)."""
    obj = tls._ssl_object  # trio forwards no chain accessor; the SSLObject underneath has one
    if sys.version_info >= (3, 13):
        return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in obj.get_unverified_chain()]  # type: ignore[attr-defined]
    # Python 3.10-3.12 have the method on the C object only (made public in 3.13).
    chain = obj._sslobj.get_unverified_chain() or []  # type: ignore[attr-defined]
    return [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in chain]  # type: ignore[attr-defined]


def _verify_result(cause: BaseException | None) -> str:
    """RFC 8460 §4.3.2.2 result type of a failed certificate verification (OpenSSL X509_V_ERR_* codes)."""
    if not isinstance(cause, ssl.SSLCertVerificationError):
        return "validation-failure"
    if cause.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        return "certificate-host-mismatch"
    if cause.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return "certificate-expired"
    return "certificate-not-trusted"


def _raw_socket(stream: trio.abc.Stream | None) -> trio.socket.SocketType | None:
    """The TCP socket under ``stream`` (through TLS layers), or None for other kinds of stream."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# ---- the client -----------------------------------------------------------------------------------


async def open_smtp(
    host_addr: str,
    port: int,
    *,
    helo_name: str,
    tls: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
    timeouts: ClientTimeouts | None = None,
    tls_server_name: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    peer_check: PeerCheck | None = None,
) -> SmtpClient:
    """Connect to ``host_addr:port`` and run greeting, EHLO (HELO fallback) and STARTTLS per ``tls``.

    ``tls_server_name`` is the MX host name: SNI, the name verified under VERIFY, and the name in error
    texts. ``ssl_context`` replaces the default context of the policy (tests pass their own CA).
    ``peer_check`` (VERIFY only) judges the certificate chain after the handshake; a refusal is an
    ``SmtpTlsError`` like a failed verification (DANE passes an unverifying context and its TLSA check).
    Returns a client ready for ``send_message``; raises an ``SmtpError`` otherwise.
    """
    timeouts = timeouts or ClientTimeouts()
    client = SmtpClient(host_addr, port, helo_name=helo_name, timeouts=timeouts, tls_server_name=tls_server_name)
    client.peer_check = peer_check if tls is TlsPolicy.VERIFY else None
    try:
        await client._open(tls, ssl_context)
    except _HandshakeFailed as exc:
        # Postfix "may": a failed handshake leaves nothing usable; try the same host once in clear text.
        log.warning("TLS handshake with %s failed (%s); retrying without TLS", client.name, exc)
        client = SmtpClient(host_addr, port, helo_name=helo_name, timeouts=timeouts, tls_server_name=tls_server_name)
        client.tls_fallback = True
        await client._open(TlsPolicy.NONE, None)
    return client


class _HandshakeFailed(Exception):
    """Internal: the opportunistic TLS handshake failed (open_smtp retries in clear text)."""


class SmtpClient:
    """One connection to one server; not safe for use by several tasks at once."""

    def __init__(
        self,
        host_addr: str,
        port: int,
        *,
        helo_name: str,
        timeouts: ClientTimeouts,
        tls_server_name: str | None = None,
    ) -> None:
        self.host_addr = host_addr
        self.port = port
        self.helo_name = helo_name
        self.timeouts = timeouts
        self.tls_server_name = tls_server_name
        self.name = f"{tls_server_name or ''}[{host_addr}]:{port}"  # Postfix style: mx.example[192.0.2.1]
        self.greeting: Reply | None = None
        self.tls_active = False
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None
        self.tls_fallback = False  # the STARTTLS handshake failed and this is the clear-text retry
        self.peer_check: PeerCheck | None = None
        self.messages = 0  # transactions attempted on this connection
        self._conn = ClientConnection()
        self._stream: trio.abc.Stream | None = None
        self._reset_due = False  # RSET to send at the head of the next transaction (defer_reset)

    # ---- the API -----------------------------------------------------------------------------

    @property
    def extensions(self) -> Extensions:
        return self._conn.extensions

    def state(self) -> ClientState:
        """Where the dialogue stands (a method, not a property: it changes across every await)."""
        return self._conn.state

    @property
    def usable(self) -> bool:
        """Open and between transactions: ready for ``send_message``."""
        return self._stream is not None and self.state() is ClientState.READY and not self._conn.pending

    async def send_message(
        self,
        mail_from: str,
        rcpts: Sequence[str],
        data: bytes,
        *,
        smtputf8: bool = False,
        body_8bit: bool = False,
    ) -> TransactionResult:
        """One mail transaction; pipelined (RFC 2920) when the server offers PIPELINING.

        ``smtputf8`` is implied by a non-ASCII address, ``body_8bit`` by 8-bit octets in ``data``.
        Refusals are in the result; an ``SmtpError`` means the connection failed (and is closed), with
        recipients already refused by RCPT in ``error.settled``. The connection is left ready for the
        next ``send_message`` (RSET is sent when a transaction stopped half-way).
        """
        if not self.usable:
            raise RuntimeError(f"connection to {self.name} is not ready for a transaction")
        if not rcpts:
            raise ValueError("no recipients")
        rcpts = list(dict.fromkeys(rcpts))
        self.messages += 1
        smtputf8 = smtputf8 or not mail_from.isascii() or not all(r.isascii() for r in rcpts)
        message = normalize_newlines(data)
        params = mail_params(
            self.extensions, size=len(message), body_8bit=body_8bit or is_8bit(message), smtputf8=smtputf8
        )
        if isinstance(params, Reply):
            log.info("%s: message refused locally: %s", self.name, params)
            return TransactionResult(params, recipients=tuple(rcpts), local=True)
        rcpt: dict[str, Reply] = {}
        if self._reset_due and not self.extensions.pipelining:
            await self.reset()  # defer_reset() never leaves this, but a stale flag must not skip the check
        transaction = self._pipelined if self.extensions.pipelining else self._lockstep
        try:
            mail, final = await transaction(mail_from, params, rcpts, rcpt, message)
        except SmtpError as exc:
            exc.settled = {r: reply for r, reply in rcpt.items() if not reply.is_positive}
            raise
        await self._end_transaction()
        return TransactionResult(mail, rcpt, final, tuple(rcpts))

    async def _end_transaction(self) -> None:
        """Leave the connection between transactions: RSET one that stopped half-way, close a dead one."""
        state = self.state()
        if state is ClientState.CLOSED:
            await self.aclose()
        elif state is not ClientState.READY:
            try:
                await self.reset()
            except SmtpError as exc:  # the result stands; the connection is just not reusable
                log.info("%s: %s", self.name, exc)

    def spoke_while_idle(self) -> bool:
        """True when the server sent something (a 421, a TLS alert, EOF) since its last reply, or when that
        cannot be told: such a connection needs the RSET round trip (``reset``) before it is reused."""
        if self._conn.unread:
            return True
        sock = _raw_socket(self._stream)
        if sock is None or sock.fileno() < 0:
            return True
        poller = select.poll()  # not select.select: no FD_SETSIZE limit with many connections open
        try:
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))  # POLLIN, or POLLHUP/POLLERR (always reported)
        except (OSError, ValueError):  # closed under us
            return True

    def defer_reset(self) -> bool:
        """Send the reuse check (RSET) ahead of the next transaction in its pipelined group instead of
        waiting for its reply now (RFC 2920 §3.1: RSET may be in a group): one write and one wait fewer per
        message. If the RSET then fails, ``send_message`` raises ``SmtpStaleConnection`` before anything of
        the transaction is answered. Only when the server offers PIPELINING and said nothing while idle;
        returns whether the RSET was deferred (else call ``reset``)."""
        if not self.usable or not self.extensions.pipelining or self.spoke_while_idle():
            return False
        self._reset_due = True
        return True

    async def reset(self) -> Reply:
        """RSET (§4.1.1.5): checks that an idle connection still works before reusing it."""
        self._reset_due = False
        answer = await self._command(self._conn.rset(), self.timeouts.rset, "sending RSET")
        if not answer.reply.is_positive:
            await self.aclose()
            raise SmtpReplyError(f"host {self.name} said: {answer.reply} (in reply to RSET)", reply=answer.reply)
        return answer.reply

    async def noop(self) -> Reply:
        answer = await self._command(self._conn.noop(), self.timeouts.rset, "sending NOOP")
        return answer.reply

    async def quit(self) -> None:
        """QUIT politely (§4.1.1.10) and close; never raises for a connection already gone."""
        self._reset_due = False  # nothing follows: the RSET is moot
        if self._stream is None:
            return
        try:
            if not self._conn.pending and (self.state(), Cmd.QUIT) in TRANSITIONS:
                await self._command(self._conn.quit(), self.timeouts.quit, "sending QUIT")
        except SmtpError as exc:
            log.debug("QUIT to %s: %s", self.name, exc)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close at once, without QUIT."""
        stream, self._stream = self._stream, None
        self._conn.state = ClientState.CLOSED
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def __aenter__(self) -> SmtpClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            await self.quit()
        else:
            await self.aclose()

    # ---- session setup -----------------------------------------------------------------------

    async def _open(self, policy: TlsPolicy, ssl_context: ssl.SSLContext | None) -> None:
        try:
            with trio.fail_after(self.timeouts.connect):
                self._stream = await trio.open_tcp_stream(self.host_addr, self.port)
        except trio.TooSlowError:
            raise SmtpConnectError(f"connect to {self.name}: connection timed out") from None
        except OSError as exc:
            raise SmtpConnectError(f"connect to {self.name}: {exc.strerror or exc}") from None
        try:
            await self._setup(policy, ssl_context)
        except BaseException:
            await self.aclose()
            raise

    async def _setup(self, policy: TlsPolicy, ssl_context: ssl.SSLContext | None) -> None:
        self.greeting = (await self._read(self.timeouts.greeting, "receiving the initial server greeting")).reply
        if self.state() is not ClientState.GREETED:
            await self.quit()
            raise SmtpReplyError(f"host {self.name} refused to talk to me: {self.greeting}", reply=self.greeting)
        await self._hello()
        if policy is TlsPolicy.NONE:
            return
        if not self.extensions.starttls:
            if policy is TlsPolicy.VERIFY:
                await self.quit()
                raise SmtpTlsError(f"TLS is required, but was not offered by host {self.name}", enhanced="4.7.4",
                                   result_type="starttls-not-supported")
            return
        await self._starttls(policy, ssl_context)

    async def _hello(self) -> None:
        answer = await self._command(self._conn.ehlo(self.helo_name), self.timeouts.helo, "sending EHLO")
        if answer.reply.is_permanent and self.state() is ClientState.GREETED:
            # RFC 5321 §4.1.1.1 / §3.2: a server without ESMTP refuses EHLO; fall back to HELO.
            answer = await self._command(self._conn.helo(self.helo_name), self.timeouts.helo, "sending HELO")
        if self.state() is not ClientState.READY:
            await self.quit()
            text = f"host {self.name} refused to talk to me: {answer.reply} (in reply to {answer.command.value})"
            raise SmtpReplyError(text, reply=answer.reply)

    async def _starttls(self, policy: TlsPolicy, ssl_context: ssl.SSLContext | None) -> None:
        """RFC 3207: STARTTLS, the handshake, then EHLO again."""
        answer = await self._command(self._conn.starttls(), self.timeouts.starttls, "sending STARTTLS")
        if self.state() is not ClientState.TLS:
            text = f"host {self.name} refused STARTTLS: {answer.reply}"
            if self.state() is ClientState.CLOSED:
                raise SmtpReplyError(text, reply=answer.reply)
            if policy is TlsPolicy.VERIFY:
                await self.quit()
                raise SmtpTlsError(text, reply=answer.reply, result_type="starttls-not-supported")
            log.info("%s refused STARTTLS (%s); continuing without TLS", self.name, answer.reply)
            return
        verify = policy is TlsPolicy.VERIFY
        if verify:
            ctx = ssl_context or verify_context()
            server_name: str | None = self.tls_server_name or self.host_addr
        else:
            ctx = ssl_context or opportunistic_context()
            name = self.tls_server_name
            server_name = name if name and not _is_ip(name) else None  # SNI only for host names
        assert self._stream is not None
        tls = trio.SSLStream(self._stream, ctx, server_hostname=server_name)
        try:
            with trio.fail_after(self.timeouts.starttls):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            cause = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc.__cause__ or exc)
            if verify:
                raise SmtpTlsError(f"TLS with {self.name} failed (verifying {server_name}): {cause}",
                                   result_type=_verify_result(exc.__cause__)) from None
            raise _HandshakeFailed(cause) from None
        self._stream = tls
        if verify and self.peer_check is not None:
            problem = self.peer_check(_peer_chain(tls))
            if problem is not None:
                raise SmtpTlsError(f"TLS with {self.name}: {problem}", result_type="certificate-not-trusted")
        self._conn.tls_started()
        self.tls_active = True
        self.tls_version = tls.version()
        cipher = tls.cipher()
        self.tls_cipher = cipher[0] if cipher else None
        log.debug("%s: %s with %s", self.name, self.tls_version, self.tls_cipher)
        await self._hello()

    # ---- transactions ------------------------------------------------------------------------

    async def _pipelined(
        self, mail_from: str, params: dict[str, str], rcpts: list[str], rcpt: dict[str, Reply], message: bytes
    ) -> tuple[Reply, Reply | None]:
        """RFC 2920 §3.1: [RSET,] MAIL, every RCPT and DATA in one write; then the replies, in order."""
        conn, t = self._conn, self.timeouts
        reset_due, self._reset_due = self._reset_due, False
        rset = conn.rset() if reset_due else b""  # the core takes the commands in the order they are sent
        out = conn.mail(mail_from, params) + b"".join(conn.rcpt(r) for r in rcpts) + conn.data()
        if reset_due:
            await self._deferred_reset(rset + out)
        else:
            await self._send(out, t.mail, "sending MAIL FROM")
        mail = (await self._read(t.mail, "sending MAIL FROM")).reply
        if self.state() is ClientState.CLOSED:  # 421: nothing more will be answered
            return mail, None
        for i, r in enumerate(rcpts):
            rcpt[r] = (await self._read(t.rcpt, "sending RCPT TO")).reply
            if self.state() is ClientState.CLOSED:
                rcpt.update(dict.fromkeys(rcpts[i + 1 :], rcpt[r]))
                return mail, rcpt[r] if conn.accepted else None
        data = (await self._read(t.data_init, "sending DATA command")).reply
        if self.state() is not ClientState.DATA:
            # DATA refused; with no recipient accepted that is the expected 503/554 (RFC 2920 §3.1).
            return mail, data if conn.accepted else None
        if not conn.accepted:
            # RFC 2920 §3.1: 354 although every RCPT failed: send an empty message, ignore the reply.
            await self._command(conn.message(b""), t.data_final, "sending end of data")
            return mail, None
        return mail, await self._message(message)

    async def _deferred_reset(self, group: bytes) -> None:
        """Send the group that starts with RSET and read RSET's reply: a connection lost by then, or anything
        but 2xx, makes the connection stale (nothing of the transaction was answered yet)."""
        try:
            await self._send(group, self.timeouts.rset, "sending RSET")
            reply = (await self._read(self.timeouts.rset, "sending RSET")).reply
        except SmtpError as exc:  # the connection is closed already
            raise SmtpStaleConnection(exc.text) from None
        if not reply.is_positive:
            await self.aclose()
            raise SmtpStaleConnection(f"host {self.name} said: {reply} (in reply to RSET)", reply=reply)

    async def _lockstep(
        self, mail_from: str, params: dict[str, str], rcpts: list[str], rcpt: dict[str, Reply], message: bytes
    ) -> tuple[Reply, Reply | None]:
        conn, t = self._conn, self.timeouts
        mail = (await self._command(conn.mail(mail_from, params), t.mail, "sending MAIL FROM")).reply
        if self.state() is not ClientState.MAIL:
            return mail, None
        for i, r in enumerate(rcpts):
            rcpt[r] = (await self._command(conn.rcpt(r), t.rcpt, "sending RCPT TO")).reply
            if self.state() is ClientState.CLOSED:
                rcpt.update(dict.fromkeys(rcpts[i + 1 :], rcpt[r]))
                return mail, rcpt[r] if conn.accepted else None
        if not conn.accepted:
            return mail, None
        data = (await self._command(conn.data(), t.data_init, "sending DATA command")).reply
        if self.state() is not ClientState.DATA:
            return mail, data
        return mail, await self._message(message)

    async def _message(self, message: bytes) -> Reply:
        """After 354: the message in blocks (§4.5.3.2.5), then the reply to the final dot (§4.5.3.2.6)."""
        wire = memoryview(self._conn.message(message))
        for start in range(0, len(wire), SEND_BLOCK):
            await self._send(wire[start : start + SEND_BLOCK], self.timeouts.data_block, "sending message body")
        # RFC 1047: a reply lost here means the message may be delivered twice; nothing to do about it.
        phase = "sending end of data -- message may be sent more than once"
        return (await self._read(self.timeouts.data_final, phase)).reply

    # ---- I/O ---------------------------------------------------------------------------------

    async def _command(self, out: bytes, seconds: float, phase: str) -> Answer:
        await self._send(out, seconds, phase)
        return await self._read(seconds, phase)

    # Plain cancel scopes, not trio.fail_after (a generator context manager): these run several times
    # per message.

    async def _send(self, out: bytes | memoryview, seconds: float, phase: str) -> None:
        stream = self._live(phase)
        scope = trio.CancelScope(deadline=trio.current_time() + seconds)
        try:
            with scope:
                await stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._fail(SmtpConnectError(f"lost connection with {self.name} while {phase}"))
        if scope.cancelled_caught:
            await self._fail(SmtpTimeout(f"conversation with {self.name} timed out while {phase}"))

    async def _read(self, seconds: float, phase: str) -> Answer:
        """The next reply, reading as needed, all within ``seconds`` (often it is buffered already: the
        replies to a pipelined group tend to arrive together)."""
        deadline: float | None = None
        while True:
            try:
                event = self._conn.next_reply()
            except ReplySyntaxError as exc:
                await self._fail(SmtpProtocolError(f"malformed reply from {self.name} while {phase}: {exc}"))
            if isinstance(event, Answer):
                log.debug("%s: %s -> %s", self.name, event.command.value, event.reply)
                return event
            if event is not NEED_DATA:  # ConnectionClosed: EOF before the reply
                await self._fail(SmtpConnectError(f"lost connection with {self.name} while {phase}"))
            if deadline is None:
                deadline = trio.current_time() + seconds
            data: bytes | bytearray = b""
            scope = trio.CancelScope(deadline=deadline)
            try:
                with scope:
                    data = await self._live(phase).receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._fail(SmtpConnectError(f"lost connection with {self.name} while {phase}"))
            if scope.cancelled_caught:
                await self._fail(SmtpTimeout(f"conversation with {self.name} timed out while {phase}"))
            self._conn.receive_data(data)

    def _live(self, phase: str) -> trio.abc.Stream:
        if self._stream is None:
            raise SmtpConnectError(f"connection with {self.name} is closed (while {phase})")
        return self._stream

    async def _fail(self, error: SmtpError) -> NoReturn:
        """Close (the dialogue is out of step or the socket is dead) and raise ``error``."""
        await self.aclose()
        raise error
