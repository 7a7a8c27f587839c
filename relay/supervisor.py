"""``atmos serve``: one Trio root nursery, services started in dependency order (DESIGN §2).

Three steps, in this order (``run_relay``):

1. bind every listener (so port 0's real port is known) and do the blocking set-up work in worker
   threads: the dev TLS certificate, the operator DKIM key, the labeler and OAuth keys, the dev demo
   member (bcrypt, DKIM keys);
2. construct every service and freeze ``Services`` (relay.services): nothing is set on a service once
   it runs, and no handler has to probe for a field;
3. start them: spool (recovery first) -> status writer -> reputation -> capture sink (dev) ->
   connection pool -> delivery scheduler -> webhooks -> event publisher -> SMTP submission ->
   inbound SMTP -> HTTP (incl. /admin/ws, /metrics) -> periodic jobs, DNS verifier, labeler.

SIGTERM/SIGINT: the listeners close first, SMTP and HTTP at once
(idle SMTP sessions get 421, hypercorn stops accepting), in-flight sessions and
requests get a grace period and the HTTP server's graceful shutdown is awaited
(every request already being handled gets its answer: a client that saw its
connection close would retry and duplicate a spooled message), deliveries get
theirs, the status writer flushes, then the nursery is cancelled and the process
exits 0.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from relay import devsetup
from relay.acceptor import Acceptor
from relay.apikey import ApiKeyCache
from relay.auth import Authenticator
from relay.config import Addr, Config
from relay.delivery.client import ConnectionPool
from relay.delivery.congestion import HostHealth
from relay.delivery.prepare import Preparer
from relay.delivery.retry import RetryPolicy
from relay.delivery.routing import Resolver
from relay.delivery.scheduler import Scheduler, SchedulerConfig
from relay.delivery.sink import CaptureSink
from relay.delivery.tlspolicy import tls_planner
from relay.delivery.tlsrpt import TlsRptCounter, tls_reporter
from relay.delivery.transport import SmtpTransport
from relay.dns.checks import DnsLookup
from relay.dns.verifier import DomainVerifier
from relay.egress import Egress
from relay.eventbus import EventBus
from relay.eventstream import reputation_hooks, run_publisher
from relay.inbound.handler import InboundHandler
from relay.inbound.service import make_inbound_server
from relay.labeler import Labeler, LabelerKey
from relay.labeler.firehose import Firehose
from relay.labeler.service import key_path as labeler_key_path
from relay.metrics import RelayMetrics
from relay.oauth import client_from_config
from relay.oauth.client import PENDING_TTL
from relay.operatorkey import OperatorKeys
from relay.reputation import Reputation
from relay.services import Bound, Services
from relay.smtp.limits import Limits
from relay.smtp.server import BufferBudget, SmtpServer, SmtpServerConfig
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.base import Store
from relay.store.mirror import StatusMirror
from relay.store.writer import StatusWriter
from relay.submission import SubmissionHandler
from relay.tlscert import server_context
from relay.webhooks import WebhookDispatcher
from spool import Spool, SpoolError
from spool.segment import make_dirs

log = logging.getLogger("relay.supervisor")


@dataclass(slots=True)
class _Listeners:
    """Every listening socket, bound before any service is built: their real ports (port 0 in tests)
    are then known to everything constructed after, so nothing is corrected once it runs."""

    submission: list[trio.SocketListener]
    submissions: list[trio.SocketListener]  # implicit TLS (RFC 8314, port 465)
    inbound: list[trio.SocketListener]
    capture: list[trio.SocketListener]
    http: socket.socket  # handed to hypercorn as fd://, which serves it
    http_urls: list[str]

    def bound(self, dev: bool) -> Bound:
        return Bound(submission=_addresses(self.submission), submissions=_addresses(self.submissions),
                     inbound=_addresses(self.inbound),
                     capture=_addresses(self.capture), http=tuple(self.http_urls), dev=dev)


def _addresses(listeners: list[trio.SocketListener]) -> tuple[tuple[str, int], ...]:
    return tuple((str(sock[0]), int(sock[1])) for sock in (lst.socket.getsockname() for lst in listeners))


def _bind_http(addr: Addr) -> tuple[socket.socket, str]:
    """What hypercorn's own bind does (config._create_sockets), done here so the port is known first."""
    sock = socket.socket(socket.AF_INET6 if ":" in addr.host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr.host, addr.port))
    except OSError:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    return sock, f"http://{Addr(host, port)}"


async def _bind(cfg: Config) -> _Listeners:
    sub, inb = cfg.smtp.submission_addr, cfg.smtp.inbound_addr
    submission = await trio.open_tcp_listeners(sub.port, host=sub.host or None)
    subs = cfg.smtp.submissions_addr
    submissions = await trio.open_tcp_listeners(subs.port, host=subs.host or None)
    inbound = await trio.open_tcp_listeners(inb.port, host=inb.host or None)
    capture = []
    if _dev_capture(cfg):
        capture = await trio.open_tcp_listeners(0, host="127.0.0.1")
    http, url = _bind_http(cfg.http.addr)
    return _Listeners(submission, submissions, inbound, capture, http, [url])


def _dev_capture(cfg: Config) -> bool:
    """Dev without a relayhost: everything goes to the built-in capture sink, so a newcomer sees
    send -> deliver offline."""
    return cfg.dev and not cfg.delivery.relayhost and cfg.delivery.capture


def _as_running(cfg: Config, listeners: _Listeners) -> Config:
    """The config with the public URL that names the HTTP port really bound (port 0 in tests), so links
    in mail, the OAuth client id and the labeler's DID document are right from the start."""
    if cfg.http.addr.port == 0 and cfg.public_url.endswith(":0"):
        return dataclasses.replace(cfg, public_url=listeners.http_urls[0])
    return cfg


async def run_relay(
    cfg: Config, shutdown: trio.Event, *, task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED
) -> None:
    await trio.to_thread.run_sync(make_dirs, cfg.state_path)  # durable names, before anything goes in
    cfg.make_state_dir()  # 0700, an existing state dir tightened too (store, spool, secrets live there)
    sync_store = open_store(cfg.store_url)
    store = AsyncStore(sync_store)
    try:
        # 1. Bind every listener and do the blocking set-up work (key generation, the dev TLS cert and
        #    demo member's bcrypt hash) in worker threads, before anything serves.
        listeners = await _bind(cfg)
        cfg = _as_running(cfg, listeners)
        bound = listeners.bound(cfg.dev)
        tls = await trio.to_thread.run_sync(server_context, cfg)
        operator = OperatorKeys(cfg.state_path, cfg.secret_key)
        await trio.to_thread.run_sync(operator.current)  # created on first start, before any delivery
        labeler_key = await trio.to_thread.run_sync(LabelerKey.load_or_create, labeler_key_path(cfg))
        oauth = await trio.to_thread.run_sync(partial(client_from_config, cfg, store=store))
        demo = await store.call(partial(devsetup.ensure_demo_member, cfg)) if cfg.dev else None

        # 2. Construct every service, then freeze Services: nothing is attached to a running service.
        writer = StatusWriter(store)
        # The store mirrors the spool (relay.store.mirror): recovery replays to it whatever it had
        # not durably seen, and compaction never deletes what it has not seen yet.
        mark = await store.spool_mark()
        spool = Spool(cfg.state_path / "spool", segment_bytes=cfg.spool.segment_bytes,
                      max_bytes=cfg.spool.max_bytes or None, reserve_bytes=cfg.spool.reserve_bytes,
                      mirror=StatusMirror(writer, count_outcomes=True, store_mark=mark), store_mark=mark)
        keys = ApiKeyCache(bcrypt_threads=cfg.auth.bcrypt_threads, bcrypt_queue=cfg.auth.bcrypt_queue)
        # The operator event stream: made before its publishers (acceptor, scheduler), which never wait on it.
        bus, metrics = EventBus(), RelayMetrics()
        # Rate counters and suspensions; delivery outcomes are counted by the mirror; automatic
        # suspensions and complaints go onto the event stream.
        reputation = Reputation.from_config(store, cfg, outcomes_in_store=True, **reputation_hooks(bus))
        sink, relayhost = None, cfg.delivery.relayhost
        if bound.capture:
            sink = CaptureSink(cfg.state_path / "captured", hostname="capture.localhost", ssl_context=tls)
            relayhost = "[{}]:{}".format(*bound.capture[0])
        pool = ConnectionPool()
        resolver = Resolver.from_config(cfg.delivery)
        tls_counter = TlsRptCounter()  # TLS-RPT (RFC 8460): sessions under DANE/MTA-STS, per day
        planner = tls_planner(cfg, resolver, recorder=tls_counter, store=store)
        tls_reports = cfg.delivery.tls_reports and (not cfg.dev or bool(cfg.dns.nameservers)
                                                    or bool(cfg.delivery.nameservers))
        transport = SmtpTransport(
            resolver, pool, helo_name=cfg.banner_host, port=cfg.delivery.port,
            relayhost=relayhost, tls_policy=planner.default, planner=planner,
            egress=Egress.from_config(cfg),
            hosts=HostHealth(per_host=cfg.delivery.per_host, min_timeout=cfg.delivery.min_timeout),
        )
        scheduler = Scheduler(spool, writer, transport, prepare=Preparer(cfg, store, operator), bus=bus,
                              delivery_events=reputation, config=SchedulerConfig(
            operator_domain=cfg.operator_domain, secret=cfg.secret_key, reporting_mta=cfg.banner_host,
            max_concurrency=cfg.delivery.max_concurrency, per_destination=cfg.delivery.per_destination,
            initial_concurrency=cfg.delivery.initial_concurrency, slow_concurrency=cfg.delivery.slow_concurrency,
            policy=RetryPolicy(schedule=cfg.delivery.retry_schedule),
        ))
        acceptor = Acceptor(spool, writer, bus=bus, metrics=metrics, on_accept=scheduler.notify)
        auth = Authenticator(store, keys, cfg.auth)
        webhooks = WebhookDispatcher(store, bus, egress=Egress.from_config(cfg), secret_key=cfg.secret_key)
        verifier = None
        if not cfg.dev or cfg.dns.nameservers:
            # Dev without test nameservers: no DNS checks, so a newcomer's relay sends no queries out.
            verifier = DomainVerifier(store, cfg, cfg.secret_key, DnsLookup.from_config(cfg))
        labeler = Labeler(store, cfg, labeler_key, verifier=verifier)
        if verifier is not None:
            verifier.on_change = labeler.on_domain_change  # (before either starts) DNS changes re-label at once
        services = Services(cfg=cfg, store=store, spool=spool, writer=writer, keys=keys, auth=auth,
                            acceptor=acceptor, scheduler=scheduler, verifier=verifier, bus=bus, metrics=metrics,
                            labeler=labeler, reputation=reputation, webhooks=webhooks, oauth=oauth, bound=bound)
        buffers = BufferBudget(cfg.smtp.data_buffer_bytes)  # DATA held in memory, all listeners together
        # Ports 587 (STARTTLS) and 465 (implicit TLS, RFC 8314): one handler, the same AUTH and policy.
        submission = SubmissionHandler(auth, store, acceptor, reputation=reputation,
                                       header_limit=cfg.limits.header_size, hostname=cfg.banner_host)
        smtp = SmtpServer(_submission_config(cfg, tls), submission, buffers=buffers, refusals=metrics)
        smtps = SmtpServer(_submission_config(cfg, tls, implicit_tls=True), submission, buffers=buffers,
                           refusals=metrics)
        inbound = make_inbound_server(cfg, InboundHandler(cfg, store, acceptor, reputation), ssl_context=tls,
                                      buffers=buffers, refusals=metrics)

        # 3. Start them in dependency order.
        async with trio.open_nursery() as root:
            await root.start(writer.run)  # before the spool: its recovery replays to the store through it
            await root.start(spool.run)  # recovery first; the spool logs its own report
            await root.start(reputation.run)  # rate counters and suspensions, loaded before any accept
            if sink is not None:
                await root.start(partial(sink.serve, listeners.capture))
            await root.start(pool.run)
            if planner.sts is not None:
                await root.start(planner.sts.run)  # MTA-STS policies refreshed in the background
            await root.start(scheduler.run)
            await root.start(webhooks.run)  # member webhooks, off the event bus
            if tls_reports:
                # Dev without test nameservers sends no DNS queries out, so no TLS reports either.
                await root.start(tls_reporter(cfg, tls_counter, store, acceptor).run)
            await root.start(run_publisher, services)  # QueueDepth, Throughput, Warming, Heartbeat
            await root.start(smtp.serve_listeners, listeners.submission)
            await root.start(smtps.serve_listeners, listeners.submissions)
            await root.start(inbound.serve_listeners, listeners.inbound)
            http_stop, http_done = trio.Event(), trio.Event()
            await root.start(_serve_http, services, listeners.http, http_stop, http_done)
            run_file = cfg.state_path / "run.json"
            run_file.write_text(bound.as_json())  # lets `atmos admin` find a relay bound to port 0
            root.start_soon(_retention, store)
            if verifier is not None:
                await root.start(verifier.run)
                await root.start(labeler.run)
                if cfg.labeler.firehose_url:
                    firehose = Firehose(cfg.labeler.firehose_url, store, labeler.request_check,
                                        max_frame=cfg.labeler.firehose_max_frame)
                    await root.start(firehose.run)
            task_status.started(bound)
            _announce(cfg, bound, demo)
            await shutdown.wait()
            log.info("shutting down: closing listeners")
            http_stop.set()  # hypercorn stops accepting at once; requests in progress run on
            with trio.move_on_after(cfg.smtp.shutdown_grace + 5):
                async with trio.open_nursery() as closing:  # every listener closes at once
                    closing.start_soon(smtp.shutdown, cfg.smtp.shutdown_grace)
                    closing.start_soon(smtps.shutdown, cfg.smtp.shutdown_grace)
                    closing.start_soon(inbound.shutdown, cfg.smtp.shutdown_grace)
                    # End every /admin/ws stream and give the handlers a moment to send their close frame (1001).
                    closing.start_soon(partial(bus.aclose, grace=1.0))
                    closing.start_soon(http_done.wait)  # hypercorn's graceful shutdown: every answer sent
            log.info("shutting down: in-flight deliveries get %.0f s", cfg.delivery.shutdown_grace)
            await scheduler.shutdown(cfg.delivery.shutdown_grace)
            with trio.move_on_after(5):
                await pool.aclose()
            await writer.flush()
            run_file.unlink(missing_ok=True)
            root.cancel_scope.cancel()
    finally:
        sync_store.close()


async def _retention(store: AsyncStore, every: float = 3600.0) -> None:
    """Purge terminal message rows after 30 days and idempotency records after 24 h (DESIGN §4)."""
    while True:
        now = time.time()
        try:
            purged = await store.purge(now)
            await store.purge_idempotent(now - 24 * 3600)
            await store.purge_web_sessions(now)
            await store.call(partial(_purge_oauth, older_than=now - PENDING_TTL))
            if purged:
                log.info("retention: purged %d terminal message rows", purged)
        except Exception:
            log.exception("retention purge failed; will try again")
        await trio.sleep(every)


def _purge_oauth(s: Store, *, older_than: float) -> int:
    return s.purge_oauth_pending(older_than)


def _submission_config(cfg: Config, tls: ssl.SSLContext, *, implicit_tls: bool = False) -> SmtpServerConfig:
    addr = cfg.smtp.submissions_addr if implicit_tls else cfg.smtp.submission_addr
    return SmtpServerConfig(
        host=addr.host, port=addr.port, hostname=cfg.banner_host, ssl_context=tls,
        implicit_tls=implicit_tls, name="submissions" if implicit_tls else "submission",
        require_tls_for_auth=True, require_auth=True,
        limits=Limits(max_message_size=cfg.limits.message_size, max_recipients=cfg.limits.recipients_per_message,
                      max_errors=cfg.smtp.error_limit, max_junk_commands=cfg.smtp.junk_command_limit),
        command_timeout=cfg.smtp.command_timeout, data_block_timeout=cfg.smtp.data_timeout,
        shutdown_grace=cfg.smtp.shutdown_grace,
        max_connections=cfg.smtp.max_connections, max_connections_per_ip=cfg.smtp.max_connections_per_ip,
        gate_timeout=cfg.smtp.pre_auth_timeout, gate_time=cfg.smtp.pre_auth_time, session_time=cfg.smtp.session_time,
    )


async def _serve_http(
    services: Services, sock: socket.socket, stop: trio.Event, done: trio.Event, *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    from web.app import create_app
    from web.server import serve

    http = services.cfg.http
    hc = HypercornConfig()
    hc.bind = [f"fd://{sock.detach()}"]  # bound by _bind_http; the server takes the descriptor over
    hc.accesslog = None
    hc.graceful_timeout = services.cfg.smtp.shutdown_grace
    hc.include_server_header = False
    hc.keep_alive_timeout = http.head_timeout  # also the deadline for a new connection's request head
    hc.read_timeout = http.read_timeout  # type: ignore[assignment]  # hypercorn types it int, uses it as float
    hc.websocket_max_message_size = http.websocket_max_message
    hc.websocket_ping_interval = http.websocket_ping
    app: Any = create_app(services)
    try:
        await serve(app, hc, stop, faults=services.metrics.faults, task_status=task_status)
    finally:
        done.set()


async def _main(cfg: Config) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown)
        await nursery.start(run_relay, cfg, shutdown)
        await shutdown.wait()
        # run_relay returns after its graceful shutdown; then stop the signal watcher.
    log.info("stopped")


async def _watch_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            shutdown.set()
            return


def _announce(cfg: Config, bound: Bound, demo: dict[str, Any] | None) -> None:
    http_url = bound.http[0] if bound.http else ""
    lines = [f"Atmosphere Relay ({'dev' if cfg.dev else 'production'}) state in {cfg.state_path.resolve()}"]
    for host, port in bound.submission:
        lines.append(f"  SMTP submission   {host}:{port}  (STARTTLS, then AUTH PLAIN/LOGIN)")
    for host, port in bound.submissions:
        lines.append(f"  SMTP submissions  {host}:{port}  (implicit TLS, RFC 8314; smtps://)")
    for host, port in bound.inbound:
        lines.append(f"  inbound SMTP      {host}:{port}  (bounces, complaints, replies to member domains)")
    for url in bound.http:
        lines.append(f"  HTTP API          {url}/v1/send   health {url}/healthz   metrics {url}/metrics")
        lines.append(f"  web pages         {url}/enroll   {url}/account   {url}/docs")
        ws = url.replace("http://", "ws://").replace("https://", "wss://")
        token = (f"$(cat {cfg.state_path / 'secrets' / 'admin_token'})" if cfg.dev else "$ATMOS_ADMIN_TOKEN")
        lines.append(f"  operator console  atmos console --url {ws}/admin/ws --token {token}")
    for host, port in bound.capture:
        lines.append(f"  capture sink      {host}:{port}  (dev: all outbound mail lands in "
                     f"{cfg.state_path / 'captured'})")
    if demo is not None and bound.submission and http_url:
        host, port = bound.submission[0]
        lines.append(devsetup.first_message_hint(cfg, demo, http_url, f"{host}:{port}"))
    print("\n".join(lines), flush=True)
    print("ATMOS_READY " + bound.as_json(), flush=True)
    log.info("ready: %s", bound.as_json())


def serve_forever(cfg: Config) -> int:
    try:
        trio.run(_main, cfg)
    except KeyboardInterrupt:
        pass
    except (OSError, SpoolError, BaseExceptionGroup) as exc:
        # e.g. a port already in use: say which, without a traceback.
        found = _first_oserror(exc)
        if found is None:
            raise
        print(f"atmos serve: cannot start: {found}", file=sys.stderr)
        return 1
    return 0


def _first_oserror(exc: BaseException) -> OSError | SpoolError | None:
    if isinstance(exc, OSError | SpoolError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_oserror(inner)
            if found is not None:
                return found
    return None


__all__ = ["Bound", "partial", "run_relay", "serve_forever"]
