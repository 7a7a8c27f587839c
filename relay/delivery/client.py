"""Delivery of one message to one destination host, with connection reuse (DESIGN §5).

    result = await deliver(["192.0.2.25", "2001:db8::25"], 25, "mx.example.net", mail_from=verp,
                           rcpts=["a@example.net"], data=signed, helo_name="relay.example",
                           tls_policy=TlsPolicy.OPPORTUNISTIC, timeouts=ClientTimeouts(), pool=pool)
    result.per_rcpt["a@example.net"]   # the remote's reply, verbatim: RCPT's if refused, else DATA's
    result.connection_error            # why recipients missing from per_rcpt were not settled (temporary)

The host's addresses are tried in order until one gives a session (connect, greeting, EHLO, STARTTLS);
once a transaction has begun on one, its outcome is final for this attempt, as in Postfix: a failure
half-way is a temporary failure of the recipients not yet settled, not a reason to send again at once.
A session refused with a 5xx reply by every address (554 greeting, HELO refused) is reported in
``connection_reply``: the scheduler may try the next MX host and bounce when it was the last one.

The ``ConnectionPool`` keeps connections that ended a transaction cleanly, keyed by (address, port,
TLS policy), for the next message to the same destination (Postfix's connection cache): RSET before
reuse, pipelined with the next transaction when the server allows (a dead or refused connection is
dropped and the next one, or a new one, is used, before anything of the message is sent), an idle
timeout, a cap on idle connections per key, and a cap on messages per connection.
"""

from __future__ import annotations

import logging
import ssl
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from relay.delivery.congestion import HostHealth
from relay.smtp.client import (
    ClientTimeouts,
    PeerCheck,
    SmtpClient,
    SmtpError,
    SmtpStaleConnection,
    SmtpTlsError,
    TlsPolicy,
    open_smtp,
)
from relay.smtp.reply import Reply

__all__ = ["ConnectionPool", "DeliveryResult", "PoolKey", "deliver"]

log = logging.getLogger("relay.delivery")


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What one host said about one message.

    ``per_rcpt``: recipients with a final answer from the remote, verbatim (its RCPT reply when refused
    there, else the reply to the final dot; a local 552 5.3.4 / 553 5.6.7 when the message could not be
    offered under the server's SIZE or without SMTPUTF8). Recipients missing from it were not settled:
    ``connection_error`` says why, and they are retried later. ``connection_reply`` is the remote's
    refusal of the session itself (greeting, EHLO/HELO), when that was the reason.
    """

    mx_host: str
    tls: bool = False
    per_rcpt: dict[str, Reply] = field(default_factory=dict)
    connection_error: str | None = None
    address: str | None = None  # the IP that answered (or the last one tried)
    connection_reply: Reply | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    reused: bool = False  # the connection came from the pool
    started: bool = False  # a transaction began on this host (its outcome is final for this attempt)
    tls_failure: str | None = None  # RFC 8460 result type when required TLS failed (SmtpTlsError)


class PoolKey(NamedTuple):
    address: str
    port: int
    tls: TlsPolicy
    auth: str = ""  # how the peer was authenticated (DANE/MTA-STS): only reused under the same terms


async def deliver(
    addresses: Sequence[str],
    port: int,
    mx_name: str,
    *,
    mail_from: str,
    rcpts: Sequence[str],
    data: bytes,
    helo_name: str,
    tls_policy: TlsPolicy = TlsPolicy.OPPORTUNISTIC,
    timeouts: ClientTimeouts | None = None,
    pool: ConnectionPool | None = None,
    ssl_context: ssl.SSLContext | None = None,
    smtputf8: bool = False,
    peer_check: PeerCheck | None = None,
    auth: str = "",
    hosts: HostHealth | None = None,
) -> DeliveryResult:
    """Offer the message to the host ``mx_name`` at ``addresses`` (in order); see the module docstring.

    Never raises for network or protocol trouble: that is in the result. ``ssl_context`` replaces the
    TLS policy's default context (tests pass their own CA). ``peer_check`` judges the server's
    certificate chain (DANE); ``auth`` names those terms so pooled connections are reused only under them.
    ``hosts``: per-address connection limits and shortened timeouts for addresses that keep hanging
    (``relay.delivery.congestion``).
    """
    if not addresses:
        return DeliveryResult(mx_name, connection_error=f"no address for host {mx_name}")
    timeouts = timeouts or ClientTimeouts()
    error: SmtpError | None = None
    for address in addresses:
        slot = hosts.slot(address, port) if hosts is not None else None
        if slot is not None:
            await slot.acquire()
        try:
            key = PoolKey(address, port, tls_policy, auth)
            result: DeliveryResult | None = None
            while result is None and pool is not None and (client := await pool.acquire(key)) is not None:
                result = await _transaction(client, key, mx_name, mail_from, rcpts, data, smtputf8, pool, True)
                # None: that one failed the RSET sent ahead of the transaction, nothing was answered: the next.
            if result is None:
                try:
                    client = await open_smtp(
                        address,
                        port,
                        helo_name=helo_name,
                        tls=tls_policy,
                        timeouts=hosts.timeouts(address, port, timeouts) if hosts is not None else timeouts,
                        tls_server_name=mx_name,
                        ssl_context=ssl_context,
                        peer_check=peer_check,
                    )
                except SmtpError as exc:
                    log.info("delivery to %s: %s", mx_name, exc.text)
                    if hosts is not None:
                        hosts.record(address, port, timed_out="timed out" in exc.text)
                    error = exc
                    continue
                result = await _transaction(client, key, mx_name, mail_from, rcpts, data, smtputf8, pool, False)
                assert result is not None  # only a reused connection has an RSET ahead of its transaction
            if hosts is not None:
                hosts.record(address, port, timed_out="timed out" in (result.connection_error or ""))
            return result
        finally:
            if slot is not None and hosts is not None:
                slot.release()
                hosts.release(address, port)
    assert error is not None
    return DeliveryResult(
        mx_name,
        connection_error=error.text,
        address=addresses[-1],
        connection_reply=error.reply if error.from_server else None,
        tls_failure=error.result_type if isinstance(error, SmtpTlsError) else None,
    )


async def _transaction(
    client: SmtpClient,
    key: PoolKey,
    mx_name: str,
    mail_from: str,
    rcpts: Sequence[str],
    data: bytes,
    smtputf8: bool,
    pool: ConnectionPool | None,
    reused: bool,
) -> DeliveryResult | None:
    """The transaction's result; None when the reused connection turned out stale (``SmtpStaleConnection``:
    nothing was answered, so the caller may try another connection at once)."""
    def result(per_rcpt: dict[str, Reply], error: str | None = None) -> DeliveryResult:
        return DeliveryResult(
            mx_name,
            tls=client.tls_active,
            per_rcpt=per_rcpt,
            connection_error=error,
            address=client.host_addr,
            tls_version=client.tls_version,
            tls_cipher=client.tls_cipher,
            reused=reused,
            started=True,
        )

    try:
        outcome = await client.send_message(mail_from, rcpts, data, smtputf8=smtputf8)
    except SmtpStaleConnection as exc:
        log.debug("pooled connection to %s dropped: %s", client.name, exc.text)
        await client.aclose()
        return None
    except SmtpError as exc:
        log.info("delivery to %s: %s", mx_name, exc.text)
        await client.aclose()
        return result(dict(exc.settled), exc.text)
    except BaseException:
        await client.aclose()
        raise
    if pool is not None:
        await pool.release(key, client)
    else:
        await client.quit()
    return result(outcome.replies())


@dataclass(slots=True)
class _Idle:
    client: SmtpClient
    since: float


class ConnectionPool:
    """Idle connections for reuse (see the module docstring). Owned by one scheduler; task-safe in Trio
    (a connection is handed to one task at a time)."""

    def __init__(self, *, idle_timeout: float = 30.0, max_idle_per_key: int = 4, max_messages: int = 100) -> None:
        self.idle_timeout = idle_timeout
        self.max_idle_per_key = max_idle_per_key
        self.max_messages = max_messages
        self._idle: defaultdict[PoolKey, list[_Idle]] = defaultdict(list)
        self._closed = False

    def idle(self, key: PoolKey | None = None) -> int:
        """How many connections wait (for ``key``, or in all)."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    async def acquire(self, key: PoolKey) -> SmtpClient | None:
        """A live idle connection for ``key`` (checked with RSET), or None: open a new one.

        The RSET goes ahead of the next transaction in its pipelined group when the server offers
        PIPELINING and said nothing while the connection was idle (``SmtpClient.defer_reset``); else it
        is a round trip here, and a connection that fails it is dropped."""
        await self.prune()
        entries = self._idle.get(key)
        while entries:
            client = entries.pop().client  # the most recently used: the least likely to have timed out
            if not entries:
                del self._idle[key]
            if client.defer_reset():
                return client
            try:
                await client.reset()
            except SmtpError as exc:
                log.debug("pooled connection to %s dropped: %s", client.name, exc.text)
                await client.aclose()
                entries = self._idle.get(key)
                continue
            except BaseException:  # cancelled: the connection is in nobody's hands any more
                await client.aclose()
                raise
            return client
        return None

    async def release(self, key: PoolKey, client: SmtpClient) -> None:
        """Give back a connection after a transaction; kept if usable and within the limits, else QUIT."""
        entries = self._idle[key]
        keep = (
            not self._closed
            and client.usable
            and client.messages < self.max_messages
            and len(entries) < self.max_idle_per_key
        )
        if keep:
            entries.append(_Idle(client, trio.current_time()))
        else:
            if not entries:
                del self._idle[key]
            await client.quit()

    async def prune(self) -> None:
        """QUIT connections idle for longer than ``idle_timeout``."""
        deadline = trio.current_time() - self.idle_timeout
        stale: list[SmtpClient] = []
        for key in list(self._idle):
            keep = [e for e in self._idle[key] if e.since > deadline and e.client.usable]
            stale += [e.client for e in self._idle[key] if e.since <= deadline or not e.client.usable]
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        await _quit_all(stale)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Optional service: prune every ``idle_timeout / 2`` seconds; closes all idle ones when cancelled."""
        task_status.started()
        try:
            while True:
                await trio.sleep(self.idle_timeout / 2)
                await self.prune()
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """QUIT every idle connection (in parallel); later releases are closed too."""
        self._closed = True
        clients = [e.client for entries in self._idle.values() for e in entries]
        self._idle.clear()
        await _quit_all(clients)


async def _quit_all(clients: list[SmtpClient], seconds: float = 5.0) -> None:
    if not clients:
        return
    with trio.move_on_after(seconds) as scope:
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(client.quit)
    if scope.cancelled_caught:
        for client in clients:
            await client.aclose()
