"""The Trio SMTP server: listeners, one task per connection, timeouts, STARTTLS, shutdown.

Thin by design: the protocol lives in ``relay.smtp.core`` (pure); this module moves
bytes, runs the TLS handshake, applies the RFC 5321 §4.5.3.2 timeouts, calls the
``SessionHandler`` hooks and turns their failures into replies.

Graceful shutdown, as the supervisor drives it::

    server = SmtpServer(config, handler)
    addresses = await nursery.start(server.serve)   # [(host, port), ...]
    ...
    await server.shutdown(grace=10)   # returns once every session has ended

Budgets (Postfix anvil/smtpd style, all in ``SmtpServerConfig``): at most
``max_connections`` sessions per listener and ``max_connections_per_ip`` per client
address (IPv4, or IPv6 /64; over either: ``421 4.7.0`` and close); before the
session's gate (AUTH on submission, the first MAIL on inbound) the idle limit is
``gate_timeout`` and the gate must be passed within ``gate_time`` (``421 4.7.0``);
a session lasts at most ``session_time`` (``421 4.4.2`` before its next command; a
message being received is finished first).
Received bytes held in memory are charged to a ``BufferBudget`` shared by every
listener: DATA is refused with ``451 4.3.1`` while it is spent, and a session that
overdraws it in DATA gets ``421 4.3.1`` and is closed.

``shutdown`` closes the listeners at once; sessions waiting for a command outside
a transaction get ``421 4.3.2`` and are closed; sessions in a transaction (or in a
handler, e.g. spooling) may finish within ``grace``, and get ``421 4.3.2`` as
soon as they go idle; after ``grace`` the rest are cancelled (421 sent if the
socket still takes it). ``serve_smtp(config, handler, shutdown=event)`` wraps the
same for supervisors that signal with a ``trio.Event``.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

import trio

from relay.errors import RelayError
from relay.ratelimit import source_key
from relay.smtp.core import COMMAND_STATES, TOO_MANY_ERRORS, ServerConnection, State
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
    MessageComplete,
    Noop,
    ProtocolError,
    Quit,
    RcptTo,
    Rset,
    StartTls,
    Vrfy,
)
from relay.smtp.handler import Session, SessionHandler
from relay.smtp.limits import Limits
from relay.smtp.reply import Reply

log = logging.getLogger("relay.smtp")

T = TypeVar("T")
Address = tuple[str, int]

RECEIVE_SIZE = 65536
#: States in which a session waiting for a command is idle (no transaction open).
IDLE_STATES = (State.INIT, State.READY)

SHUTTING_DOWN = Reply(421, "4.3.2", "service shutting down")
TIMEOUT = Reply(421, "4.4.2", "timeout exceeded, closing connection")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "too many connections, try again later")
TOO_MANY_FROM_YOU = Reply(421, "4.7.0", "too many connections from your address, try again later")
SESSION_TOO_LONG = Reply(421, "4.4.2", "session time limit reached, closing connection")
NO_MEMORY = Reply(421, "4.3.1", "insufficient system resources, try again later")
DATA_LATER = Reply(451, "4.3.1", "insufficient system resources, try again later")
LOCAL_ERROR = Reply(451, "4.3.0", "local error, try again later")
_COMMITTED_REPLY_WAIT = 10.0  # seconds a durable message's 250 may take to write, even on shutdown
_TLS_FAILED = Reply(421, "4.7.0", "TLS handshake failed")  # never sent: the channel is unusable

#: Refusals the core and the listener decide, by (code, enhanced code), for the /metrics reason label;
#: a RelayError from a hook is labelled with its own code, anything else ``smtp_<code>``.
_REFUSAL_REASONS = {
    (500, "5.5.2"): "syntax", (500, "5.5.6"): "line_too_long", (501, "5.5.4"): "syntax",
    (501, "5.5.2"): "auth_syntax", (501, "5.0.0"): "auth_cancelled", (502, "5.5.1"): "not_implemented",
    (503, "5.5.1"): "bad_sequence", (504, "5.5.4"): "auth_mechanism", (530, "5.7.0"): "auth_required",
    (535, "5.7.8"): "auth_failed", (550, "5.6.11"): "bare_cr", (552, "5.3.4"): "message_too_big",
    (452, "4.5.3"): "too_many_recipients", (421, "4.7.0"): "closed", (554, "5.5.0"): "starttls_injection",
    (553, "5.1.3"): "bad_recipient", (451, "4.3.0"): "local_error", (451, "4.3.1"): "no_buffer_space",
    (421, "4.4.2"): "time_limit",
}

# Errors from accept() that mean "out of resources", not "listener broken" (as trio.serve_listeners).
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


@dataclass(frozen=True, slots=True)
class SmtpServerConfig:
    host: str = "127.0.0.1"
    port: int = 0
    hostname: str = "localhost"  # banner and EHLO name
    ssl_context: ssl.SSLContext | None = None  # None: STARTTLS not offered
    implicit_tls: bool = False  # RFC 8314 §3.3 (port 465): TLS from the first byte, no STARTTLS
    require_tls_for_auth: bool = True  # AUTH before STARTTLS -> 530 5.7.0
    require_auth: bool = False  # submission: MAIL before AUTH -> 530 5.7.0
    auth_enabled: bool = True  # False on port 25: AUTH -> 502, not advertised
    limits: Limits = field(default_factory=Limits)
    command_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7; also bounds hooks and writes
    data_block_timeout: float = 180.0  # §4.5.3.2.5: each read during DATA
    data_termination_timeout: float = 600.0  # §4.5.3.2.6: bounds on_message
    max_connections: int = 1000
    max_connections_per_ip: int = 50  # Postfix smtpd_client_connection_count_limit
    gate_timeout: float = 60.0  # idle limit before AUTH (require_auth) or the first MAIL
    gate_time: float = 120.0  # AUTH / first MAIL must come within this many seconds of connecting
    session_time: float = 3600.0  # a whole session, however busy
    shutdown_grace: float = 10.0
    name: str = "smtp"  # the listener in refusal logs and the /metrics label: submission, submissions, inbound

    def gate_reply(self) -> Reply:
        what = "authentication" if self.require_auth else "a mail transaction"
        return Reply(421, "4.7.0", f"{what} required within {self.gate_time:.0f} s, closing connection")


class RefusalCounter(Protocol):
    """Where refusals are counted (relay.metrics.RelayMetrics)."""

    def observe_refusal(self, listener: str, reason: str) -> None: ...


class BufferBudget:
    """Bytes of received mail held in memory, relay-wide (shared by the listeners)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @property
    def spent(self) -> bool:
        return self.used >= self.limit


class Drain:
    """Shutdown signal shared by the sessions of one server.

    A session registers the cancel scope of its idle wait with ``add``; ``start()``
    cancels the registered scopes, and any scope added later is cancelled at once.
    (Plain scopes, no context-manager generator: this runs for every command.)
    """

    def __init__(self) -> None:
        self.started = False
        self._idle: set[trio.CancelScope] = set()

    def start(self) -> None:
        self.started = True
        for scope in self._idle:
            scope.cancel()

    def add(self, scope: trio.CancelScope) -> None:
        if self.started:
            scope.cancel()
        self._idle.add(scope)

    def discard(self, scope: trio.CancelScope) -> None:
        self._idle.discard(scope)


async def handle_connection(
    stream: trio.abc.Stream,
    peer: Address,
    config: SmtpServerConfig,
    handler: SessionHandler,
    *,
    drain: Drain | None = None,
    buffers: BufferBudget | None = None,
    refusals: RefusalCounter | None = None,
) -> None:
    """Run one SMTP session on ``stream`` until it ends; closes the stream.

    Never raises for peer or handler misbehaviour; only ``trio.Cancelled``.
    """
    budget = buffers or BufferBudget(1 << 62)
    await _Connection(stream, peer, config, handler, drain or Drain(), budget, refusals).run()


class _Connection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        peer: Address,
        config: SmtpServerConfig,
        handler: SessionHandler,
        drain: Drain,
        buffers: BufferBudget,
        refusals: RefusalCounter | None = None,
    ) -> None:
        self.stream = stream
        self.refusals = refusals
        self._reason: str | None = None  # the RelayError code behind the last hook's reply
        self.config = config
        self.handler = handler
        self.drain = drain
        self.session = Session(peer=peer)
        self.conn = ServerConnection(
            hostname=config.hostname,
            limits=config.limits,
            tls_available=config.ssl_context is not None and not config.implicit_tls,
            tls_active=config.implicit_tls,
            auth_enabled=config.auth_enabled,
            require_tls_for_auth=config.require_tls_for_auth,
            require_auth=config.require_auth,
        )
        self._out = bytearray()  # replies not yet written (RFC 2920 §3.1 batching)
        self._buffers = buffers
        self._charged = 0  # what this session holds of the buffer budget
        start = trio.current_time()
        self._gate_deadline: float | None = start + config.gate_time
        self._end = start + config.session_time
        self._mailed = False  # a MAIL was accepted in this session (the gate when AUTH is not required)

    async def run(self) -> None:
        log.debug("connect from %s", self.session.peer)
        try:
            if self.config.implicit_tls and not await self._handshake():
                return
            await self._greet()
            while self.conn.state is not State.CLOSED:
                await self._step()
            await self._flush()
        except trio.Cancelled:
            await self._last_words()
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("connection from %s lost", self.session.peer)
        except trio.TooSlowError:
            log.info("write to %s timed out", self.session.peer)
        finally:
            self._buffers.used -= self._charged
            self._charged = 0
            await trio.aclose_forcefully(self.stream)
            log.debug("disconnect from %s", self.session.peer)

    async def _greet(self) -> None:
        if self.drain.started:
            greeting: Reply | None = SHUTTING_DOWN
        else:
            greeting = await self._hook(
                "on_connect", lambda: self.handler.on_connect(self.session), self.config.command_timeout
            )
        self._out += self.conn.send(greeting or Reply(220, None, f"{self.config.hostname} ESMTP ready"))
        if greeting is not None and greeting.code >= 400 and greeting is not SHUTTING_DOWN:
            self._refused(None, greeting)  # the session itself was refused (RFC 5321 §3.1: 554)

    async def _step(self) -> None:
        state = self.conn.state
        if state in COMMAND_STATES:
            limit = SHUTTING_DOWN if self.drain.started and state in IDLE_STATES else self._over_time()
            if limit is not None:
                self._out += self.conn.close(limit)
                return
        event = self.conn.next_event()
        if event is NEED_DATA:
            await self._flush_and_receive()
            return
        if isinstance(event, ConnectionClosed):
            return
        self._reason = None
        reply = await self._answer(event)
        self._out += self.conn.send(reply)
        self._record(event, reply)
        if reply.code >= 400:
            self._refused(event, reply)
        self._charge()  # before the flush: the message's bytes are free once it is answered
        if isinstance(event, MessageComplete) and reply.code < 300:
            await self._flush_committed()
        if self.conn.state is State.TLS:
            await self._start_tls()

    def _gate_passed(self) -> bool:
        """Submission: AUTH succeeded; otherwise: a MAIL was accepted. Once passed, for good."""
        if self._gate_deadline is not None and (self.conn.authenticated if self.config.require_auth
                                                else self._mailed):
            self._gate_deadline = None
        return self._gate_deadline is None

    def _over_time(self) -> Reply | None:
        """The closing reply when the session or its gate ran out of time (checked between commands)."""
        now = trio.current_time()
        if not self._gate_passed() and self._gate_deadline is not None and now >= self._gate_deadline:
            log.info("closing %s: gate time over (%.0f s)", self.session.peer, self.config.gate_time)
            return self.config.gate_reply()
        if now >= self._end:
            log.info("closing %s: session time over (%.0f s)", self.session.peer, self.config.session_time)
            return SESSION_TOO_LONG
        return None

    def _charge(self) -> bool:
        """Bring this session's share of the buffer budget up to date; False: overdrawn in DATA."""
        held = self.conn.buffered
        self._buffers.used += held - self._charged
        self._charged = held
        return not (self.conn.state is State.DATA and held and self._buffers.used > self._buffers.limit)

    async def _flush_and_receive(self) -> None:
        """Write the batched replies (RFC 2920 §3.1), then wait for more input.

        One cancel scope per round trip (this is the hot path): its deadline is the
        RFC 5321 §4.5.3.2 timeout, and while idle it is also the shutdown signal.
        """
        state = self.conn.state
        idle = state in IDLE_STATES
        now = trio.current_time()
        if state is State.DATA:
            deadline, expired = now + self.config.data_block_timeout, TIMEOUT
        elif self._gate_passed():
            deadline, expired = now + self.config.command_timeout, TIMEOUT
        else:
            deadline, expired = now + min(self.config.command_timeout, self.config.gate_timeout), TIMEOUT
            if self._gate_deadline is not None and self._gate_deadline < deadline:
                deadline, expired = self._gate_deadline, self.config.gate_reply()
        if state is not State.DATA and self._end < deadline:
            deadline, expired = self._end, SESSION_TOO_LONG
        data = None
        scope = trio.CancelScope(deadline=deadline)
        try:
            with scope:
                if self._out:
                    out = bytes(self._out)
                    self._out.clear()
                    await self.stream.send_all(out)
                if idle:
                    self.drain.add(scope)  # only now: never interrupt a half-written reply
                data = await self.stream.receive_some(RECEIVE_SIZE)
        finally:
            if idle:
                self.drain.discard(scope)
        if data is not None:
            self.conn.receive_data(data)
            if not self._charge():
                log.warning("closing %s: DATA buffers full (%d bytes held relay-wide)", self.session.peer,
                            self._buffers.used)
                self._out += self.conn.close(NO_MEMORY)
                self._buffers.used -= self._charged  # given back now, not after the 421 is written
                self._charged = 0
        else:
            self._out += self.conn.close(SHUTTING_DOWN if idle and self.drain.started else expired)

    async def _flush(self) -> None:
        if self._out:
            data = bytes(self._out)
            self._out.clear()
            with trio.fail_after(self.config.command_timeout):
                await self.stream.send_all(data)

    async def _flush_committed(self) -> None:
        """The message is durable: its 250 goes out now, even if this session is being cancelled
        (a client that never sees it retries and the message is delivered twice). Shielded, bounded.
        The end of DATA is a synchronisation point anyway (RFC 2920 §3.1): the client waits for it."""
        with trio.CancelScope(shield=True), trio.move_on_after(_COMMITTED_REPLY_WAIT):
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                pass  # the peer is gone; the message stays accepted

    async def _last_words(self) -> None:
        """Cancelled (shutdown grace over): try to say 421 before closing."""
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            self._out += self.conn.close(SHUTTING_DOWN)
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass

    async def _start_tls(self) -> None:
        """RFC 3207: the 220 is out; the handshake runs on the raw stream."""
        await self._flush()
        if await self._handshake():
            self.conn.tls_started()
            self.session.ehlo = self.session.did = None  # RFC 3207 §4.2
        else:
            self.conn.close(_TLS_FAILED)  # close quietly: the channel is neither TLS nor plaintext

    async def _handshake(self) -> bool:
        """The TLS handshake on the raw stream (after STARTTLS, or at connect for RFC 8314 §3.3)."""
        assert self.config.ssl_context is not None
        tls = trio.SSLStream(self.stream, self.config.ssl_context, server_side=True, https_compatible=True)
        with trio.move_on_after(self.config.command_timeout):
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError as exc:
                log.debug("TLS handshake with %s failed: %s", self.session.peer, exc.__cause__ or exc)
                return False
            _quickack(self.stream)
            self.stream = tls
            self.session.tls = True
            _note_tls(self.session, tls)
            return True
        log.debug("TLS handshake with %s timed out", self.session.peer)
        return False

    # ---- events -> replies -------------------------------------------------------------

    async def _answer(self, event: Event) -> Reply:
        session, handler, timeout = self.session, self.handler, self.config.command_timeout
        match event:
            case ProtocolError() | AuthChallenge():
                return event.reply
            case Ehlo():
                return self.conn.ehlo_reply(event)
            case StartTls():
                return Reply(220, "2.0.0", "ready to start TLS")
            case Credentials():
                return await self._auth(event)
            case MailFrom(address, params):
                return await self._hook("on_mail", lambda: handler.on_mail(session, address, params), timeout)
            case RcptTo(address, params):
                return await self._hook("on_rcpt", lambda: handler.on_rcpt(session, address, params), timeout)
            case Data():
                if self._buffers.spent:  # every byte of DATA is held in memory until the final dot
                    log.warning("DATA from %s refused: buffers full (%d bytes)", session.peer, self._buffers.used)
                    return DATA_LATER
                return Reply(354, None, "end data with <CR><LF>.<CR><LF>")
            case MessageComplete(data):
                deadline = self.config.data_termination_timeout
                return await self._hook("on_message", lambda: handler.on_message(session, data), deadline)
            case Rset() | Noop():
                return Reply(250, "2.0.0", "OK")
            case Vrfy():  # RFC 5321 §3.5.3: no verification, no refusal either
                return Reply(252, "2.5.0", "cannot VRFY user, but will accept message and attempt delivery")
            case Help():
                return Reply(214, "2.0.0", "see RFC 5321")
            case Quit():
                return Reply(221, "2.0.0", "bye")
        raise AssertionError(f"unexpected event {event!r}")

    async def _auth(self, event: Credentials) -> Reply:
        if event.authzid and event.authzid != event.username:
            # RFC 4616 §2: acting as someone else is not something members may do.
            return Reply(535, "5.7.8", "authentication failed")
        call = partial(self.handler.on_auth, self.session, event.username, event.password)
        return await self._hook("on_auth", call, self.config.command_timeout)

    async def _hook(self, name: str, call: Callable[[], Awaitable[T]], seconds: float) -> T | Reply:
        """Run a handler hook; failures become replies, never exceptions."""
        scope = trio.CancelScope(deadline=trio.current_time() + seconds)
        try:
            with scope:
                return await call()
        except RelayError as exc:
            self._reason = exc.code.lower()
            return exc.smtp_reply
        except Exception:
            log.exception("handler %s failed (peer %s)", name, self.session.peer)
            return LOCAL_ERROR
        # Only reached when the deadline cancelled the hook.
        log.error("handler %s timed out after %.0f s (peer %s)", name, seconds, self.session.peer)
        return LOCAL_ERROR

    def _refused(self, event: Event | None, reply: Reply) -> None:
        """Every refused command or transaction: one log line and one count (listener, reason)."""
        reason = self._reason or ("too_many_errors" if reply == TOO_MANY_ERRORS else _REFUSAL_REASONS.get(
            (reply.code, reply.enhanced or ""), f"smtp_{reply.code}"))
        what = "message" if isinstance(event, MessageComplete) else (
            "connection" if event is None else type(event).__name__.lower())
        log.info("refused %s on %s from %s did=%s: %d %s %s", what, self.config.name, self.session.peer[0],
                 self.session.did or "-", reply.code, reply.enhanced or "", reply.text)
        if self.refusals is not None:
            self.refusals.observe_refusal(self.config.name, reason)

    def _record(self, event: Event, reply: Reply) -> None:
        """Keep the Session in step with what the core accepted."""
        session = self.session
        if 200 <= reply.code < 300:
            if isinstance(event, Ehlo):
                session.ehlo, session.extended = event.name, event.extended
            elif isinstance(event, MailFrom):
                session.mail_from, session.rcpts = event.address, []
                self._mailed = True
            elif isinstance(event, RcptTo):
                session.rcpts.append(event.address)
                self.conn.message_limit = session.message_limit  # a handler may lower it per recipient
        if self.conn.state in IDLE_STATES and (session.mail_from is not None or session.rcpts):
            session.mail_from, session.rcpts = None, []  # the transaction is over
            session.message_limit = None


class SmtpServer:
    """Listeners plus sessions, with graceful shutdown (see the module docstring)."""

    def __init__(self, config: SmtpServerConfig, handler: SessionHandler, *,
                 buffers: BufferBudget | None = None, refusals: RefusalCounter | None = None) -> None:
        self.config = config
        self.handler = handler
        self.buffers = buffers or BufferBudget(1 << 62)
        self.refusals = refusals  # /metrics: refusals by listener and reason
        self._per_ip: dict[str, int] = {}  # open sessions per source_key (anvil)
        self._refusing: set[str] = set()  # keys refused since their last session ended: logged once
        self._drain = Drain()
        self._accept_scope = trio.CancelScope()
        self._sessions_scope: trio.CancelScope | None = None
        self._active = 0
        self._drained = trio.Event()
        self._stopped = trio.Event()
        self._serving = False

    @property
    def active_sessions(self) -> int:
        return self._active

    async def serve(self, *, task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``config.host:config.port``; reports the bound addresses."""
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host or None)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on ready-made listeners (tests pass in-memory ones); returns after shutdown."""
        self._serving = True
        try:
            async with trio.open_nursery() as sessions:
                self._sessions_scope = sessions.cancel_scope
                with self._accept_scope:
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(self._accept_loop, listener, sessions)
                        task_status.started(_addresses(listeners))
                await _close_listeners(listeners)  # shutdown began: stop accepting right away
        finally:
            await _close_listeners(listeners)
            self._stopped.set()

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, drain sessions for ``grace`` seconds, then cancel the rest."""
        grace = self.config.shutdown_grace if grace is None else grace
        self._drain.start()
        self._accept_scope.cancel()
        if self._active:
            with trio.move_on_after(grace):
                await self._drained.wait()
        if self._sessions_scope is not None:
            self._sessions_scope.cancel()
        if self._serving:
            await self._stopped.wait()

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream], sessions: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.warning("accept: %s; pausing 100 ms", exc)
                await trio.sleep(0.1)
                continue
            peer = _peer(stream)
            key = source_key(peer[0])
            if self._active >= self.config.max_connections:
                log.warning("refusing %s on %s: %d sessions open", peer, self.config.name, self._active)
                sessions.start_soon(self._refuse, stream, TOO_MANY_CONNECTIONS)
            elif self._per_ip.get(key, 0) >= self.config.max_connections_per_ip:
                if key not in self._refusing:  # a flood must not become a flood of log lines
                    self._refusing.add(key)
                    log.warning("refusing connections from %s: %d sessions open (%s)", key, self._per_ip[key], peer)
                sessions.start_soon(self._refuse, stream, TOO_MANY_FROM_YOU)
            else:
                self._active += 1
                self._per_ip[key] = self._per_ip.get(key, 0) + 1
                sessions.start_soon(self._session, stream, peer, key)

    async def _session(self, stream: trio.abc.Stream, peer: Address, key: str) -> None:
        try:
            await handle_connection(stream, peer, self.config, self.handler, drain=self._drain,
                                    buffers=self.buffers, refusals=self.refusals)
        except Exception:  # a bug in this layer must not take the listener down
            log.exception("session with %s crashed", peer)
        finally:
            self._active -= 1
            left = self._per_ip.pop(key) - 1
            if left:
                self._per_ip[key] = left
            self._refusing.discard(key)
            if self._active == 0 and self._drain.started:
                self._drained.set()

    async def _refuse(self, stream: trio.abc.Stream, reply: Reply) -> None:
        if self.refusals is not None:
            reason = "too_many_connections" if reply is TOO_MANY_CONNECTIONS else "too_many_from_address"
            self.refusals.observe_refusal(self.config.name, reason)
        with trio.move_on_after(5):
            try:
                await stream.send_all(reply.to_bytes())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        await trio.aclose_forcefully(stream)


async def serve_smtp(
    config: SmtpServerConfig,
    handler: SessionHandler,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[list[Address]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an SmtpServer; when ``shutdown`` is set, shut down gracefully and return.

    Example (supervisor)::

        stop = trio.Event()
        addrs = await nursery.start(functools.partial(serve_smtp, cfg, handler, shutdown=stop))
        ...
        stop.set()   # listeners close; idle sessions get 421 4.3.2; busy ones get cfg.shutdown_grace
    """
    server = SmtpServer(config, handler)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(server.serve)
        task_status.started(addresses)
        if shutdown is not None:
            await shutdown.wait()
            await server.shutdown()


def _peer(stream: trio.abc.Stream) -> Address:
    sock = getattr(stream, "socket", None)
    try:
        host, port = sock.getpeername()[:2] if sock is not None else ("", 0)
    except OSError:
        return ("", 0)
    return (str(host), int(port))


def _addresses(listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]) -> list[Address]:
    out = []
    for listener in listeners:
        sock = getattr(listener, "socket", None)
        if sock is not None:
            host, port = sock.getsockname()[:2]
            out.append((str(host), int(port)))
    return out


async def _close_listeners(listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]) -> None:
    with trio.CancelScope(shield=True):
        for listener in listeners:
            await listener.aclose()


def _note_tls(session: Session, tls: trio.SSLStream[trio.abc.Stream]) -> None:
    """What the handshake agreed, for the Received: field (relay.smtp.trace)."""
    session.tls_version = tls.version() or ""
    cipher = tls.cipher()
    if cipher is not None:
        session.tls_cipher, session.tls_bits = cipher[0], int(cipher[2])


def _quickack(stream: trio.abc.Stream) -> None:
    """Acknowledge the client's last TLS 1.3 handshake flight at once.

    Without it the kernel delays that ACK (~40 ms) and clients without TCP_NODELAY
    (stdlib smtplib among them) hold back their EHLO until it arrives: a fixed
    40 ms stall per new connection (measured by scripts/bench). Linux only.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is None or not isinstance(stream, trio.SocketStream):
        return
    try:
        stream.setsockopt(socket.IPPROTO_TCP, quickack, 1)
    except OSError:
        pass
