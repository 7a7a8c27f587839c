"""``atmos serve``: one Trio root nursery, services started in dependency order (DESIGN §2).

    store -> spool (recovery first) -> status writer -> event bus -> delivery scheduler
      -> SMTP submission -> inbound SMTP -> HTTP (incl. /admin/ws, /metrics) -> periodic jobs

Each service reports its real bound address through ``task_status`` so port 0
works everywhere. SIGTERM/SIGINT: the listeners close first, SMTP and HTTP at once
(idle SMTP sessions get 421, hypercorn stops accepting), in-flight sessions and
requests get a grace period and the HTTP server's graceful shutdown is awaited
(every request already being handled gets its answer: a client that saw its
connection close would retry and duplicate a spooled message), deliveries get
theirs, the status writer flushes, then the nursery is cancelled and the process
exits 0.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from relay import devsetup
from relay.acceptor import Acceptor
from relay.apikey import ApiKeyCache
from relay.auth import Authenticator
from relay.config import Config
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
from relay.eventbus import EventBus
from relay.eventstream import connect_reputation, run_publisher
from relay.inbound.handler import InboundHandler
from relay.inbound.service import make_inbound_server
from relay.labeler import Labeler
from relay.labeler.firehose import Firehose
from relay.metrics import RelayMetrics
from relay.oauth.client import PENDING_TTL
from relay.operatorkey import OperatorKeys
from relay.reputation import Reputation
from relay.services import Services
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


@dataclass
class Bound:
    """Where the running relay listens (printed at start, used by tests)."""

    submission: list[tuple[str, int]] = field(default_factory=list)
    http: list[str] = field(default_factory=list)
    capture: list[tuple[str, int]] = field(default_factory=list)
    inbound: list[tuple[str, int]] = field(default_factory=list)
    dev: bool = False  # started with --dev: `atmos admin` reads this to load the config the same way

    def as_json(self) -> str:
        return json.dumps({"dev": self.dev, "submission": [f"{h}:{p}" for h, p in self.submission], "http": self.http,
                           "inbound": [f"{h}:{p}" for h, p in self.inbound],
                           "capture": [f"{h}:{p}" for h, p in self.capture]})


async def run_relay(
    cfg: Config, shutdown: trio.Event, *, task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED
) -> None:
    await trio.to_thread.run_sync(make_dirs, cfg.state_path)  # durable names, before anything goes in
    sync_store = open_store(cfg.store_url)
    store = AsyncStore(sync_store)
    try:
        async with trio.open_nursery() as root:
            writer = StatusWriter(store)
            await root.start(writer.run)
            # The store mirrors the spool (relay.store.mirror): recovery replays to it whatever it had
            # not durably seen, and compaction never deletes what it has not seen yet.
            mark = await store.spool_mark()
            spool = Spool(cfg.state_path / "spool", segment_bytes=cfg.spool.segment_bytes,
                          max_bytes=cfg.spool.max_bytes or None, reserve_bytes=cfg.spool.reserve_bytes,
                          mirror=StatusMirror(writer, count_outcomes=True, store_mark=mark), store_mark=mark)
            await root.start(spool.run)  # recovery first; the spool logs its own report
            keys = ApiKeyCache(bcrypt_threads=cfg.auth.bcrypt_threads, bcrypt_queue=cfg.auth.bcrypt_queue)
            # Rate counters and suspensions, loaded first; delivery outcomes are counted by the mirror.
            reputation = Reputation.from_config(store, cfg, outcomes_in_store=True)
            await root.start(reputation.run)
            # The operator event stream: made before its publishers (acceptor, scheduler), which never wait on it.
            bus, metrics = EventBus(), RelayMetrics()
            acceptor = Acceptor(spool, writer, bus=bus, metrics=metrics)
            bound = Bound(dev=cfg.dev)
            tls_counter = TlsRptCounter()  # TLS-RPT (RFC 8460): sessions under DANE/MTA-STS, per day
            scheduler, pool, prepare = await _start_delivery(cfg, root, spool, writer, store, bound, bus,
                                                             recorder=tls_counter)
            scheduler.delivery_events = reputation
            acceptor.on_accept = scheduler.notify
            if cfg.delivery.tls_reports and (not cfg.dev or cfg.dns.nameservers or cfg.delivery.nameservers):
                # Dev without test nameservers sends no DNS queries out, so no TLS reports either.
                await root.start(tls_reporter(cfg, tls_counter, store, acceptor).run)
            services = Services(cfg=cfg, store=store, spool=spool, writer=writer, keys=keys,
                                auth=Authenticator(store, keys, cfg.auth), acceptor=acceptor, scheduler=scheduler,
                                bus=bus, metrics=metrics, reputation=reputation)
            connect_reputation(bus, reputation)  # automatic suspensions and complaints onto the event stream
            await root.start(run_publisher, services)  # QueueDepth, Throughput, Warming, Heartbeat
            services.webhooks = WebhookDispatcher(store, bus)
            await root.start(services.webhooks.run)  # member webhooks, off the event bus
            buffers = BufferBudget(cfg.smtp.data_buffer_bytes)  # DATA held in memory, both listeners together
            smtp = SmtpServer(_submission_config(cfg),
                              SubmissionHandler(services.auth, store, services.acceptor, reputation=reputation),
                              buffers=buffers)
            bound.submission = await root.start(smtp.serve)
            inbound = make_inbound_server(cfg, InboundHandler(cfg, store, acceptor, reputation),
                                          ssl_context=server_context(cfg), buffers=buffers)
            bound.inbound = await root.start(inbound.serve)
            http_stop, http_done = trio.Event(), trio.Event()
            bound.http = await root.start(_serve_http, services, http_stop, http_done)
            if cfg.http.addr.port == 0 and cfg.public_url.endswith(":0") and bound.http:
                prepare.public_url = bound.http[0]  # links in mail must name the port actually bound
            run_file = cfg.state_path / "run.json"
            run_file.write_text(bound.as_json())  # lets `atmos admin` find a relay bound to port 0
            root.start_soon(_retention, store)
            if not cfg.dev or cfg.dns.nameservers:
                # Dev without test nameservers: no DNS checks, so a newcomer's relay sends no queries out.
                verifier = DomainVerifier(store, cfg, cfg.secret_key, DnsLookup.from_config(cfg))
                services.labeler = Labeler(store, cfg, verifier=verifier)  # before services.verifier: xrpc waits
                verifier.on_change = services.labeler.on_domain_change
                services.verifier = verifier
                await root.start(verifier.run)
                await root.start(services.labeler.run)
                if cfg.labeler.firehose_url:
                    firehose = Firehose(cfg.labeler.firehose_url, store, services.labeler.request_check,
                                        max_frame=cfg.labeler.firehose_max_frame)
                    await root.start(firehose.run)
            task_status.started(bound)
            await shutdown.wait()
            log.info("shutting down: closing listeners")
            http_stop.set()  # hypercorn stops accepting at once; requests in progress run on
            with trio.move_on_after(cfg.smtp.shutdown_grace + 5):
                async with trio.open_nursery() as closing:  # every listener closes at once
                    closing.start_soon(smtp.shutdown, cfg.smtp.shutdown_grace)
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


async def _start_delivery(
    cfg: Config, root: trio.Nursery, spool: Spool, writer: StatusWriter, store: AsyncStore, bound: Bound,
    bus: EventBus | None = None, recorder: TlsRptCounter | None = None,
) -> tuple[Scheduler, ConnectionPool, Preparer]:
    """Transport (routing + SMTP client + connection pool), then the scheduler over the spool."""
    relayhost = cfg.delivery.relayhost
    if cfg.dev and not relayhost and cfg.delivery.capture:
        # Dev: everything goes to the built-in capture sink, so a newcomer sees send -> deliver offline.
        sink = CaptureSink(cfg.state_path / "captured", hostname="capture.localhost", ssl_context=server_context(cfg))
        host, port = await root.start(sink.serve)
        bound.capture = [(host, port)]
        relayhost = f"[{host}]:{port}"
    pool = ConnectionPool()
    await root.start(pool.run)
    resolver = Resolver.from_config(cfg.delivery)
    planner = tls_planner(cfg, resolver, recorder=recorder, store=store)
    if planner.sts is not None:
        await root.start(planner.sts.run)
    transport = SmtpTransport(
        resolver, pool, helo_name=cfg.banner_host, port=cfg.delivery.port, relayhost=relayhost,
        tls_policy=planner.default, allow_loopback_mx=cfg.delivery.allow_loopback_mx, planner=planner,
        hosts=HostHealth(per_host=cfg.delivery.per_host, min_timeout=cfg.delivery.min_timeout),
    )
    operator = OperatorKeys(cfg.state_path, cfg.secret_key)
    await trio.to_thread.run_sync(operator.current)  # created on first start, before any delivery
    prepare = Preparer(cfg, store, operator)
    scheduler = Scheduler(spool, writer, transport, prepare=prepare, bus=bus, config=SchedulerConfig(
        operator_domain=cfg.operator_domain, secret=cfg.secret_key, reporting_mta=cfg.banner_host,
        max_concurrency=cfg.delivery.max_concurrency, per_destination=cfg.delivery.per_destination,
        initial_concurrency=cfg.delivery.initial_concurrency, slow_concurrency=cfg.delivery.slow_concurrency,
        policy=RetryPolicy(schedule=cfg.delivery.retry_schedule),
    ))
    await root.start(scheduler.run)
    return scheduler, pool, prepare


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


def _submission_config(cfg: Config) -> SmtpServerConfig:
    addr = cfg.smtp.submission_addr
    return SmtpServerConfig(
        host=addr.host, port=addr.port, hostname=cfg.banner_host, ssl_context=server_context(cfg),
        require_tls_for_auth=True, require_auth=True,
        limits=Limits(max_message_size=cfg.limits.message_size, max_recipients=cfg.limits.recipients_per_message,
                      max_errors=cfg.smtp.error_limit, max_junk_commands=cfg.smtp.junk_command_limit),
        command_timeout=cfg.smtp.command_timeout, data_block_timeout=cfg.smtp.data_timeout,
        shutdown_grace=cfg.smtp.shutdown_grace,
        max_connections=cfg.smtp.max_connections, max_connections_per_ip=cfg.smtp.max_connections_per_ip,
        gate_timeout=cfg.smtp.pre_auth_timeout, gate_time=cfg.smtp.pre_auth_time, session_time=cfg.smtp.session_time,
    )


async def _serve_http(
    services: Services, stop: trio.Event, done: trio.Event, *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    from web.app import create_app
    from web.server import serve

    http = services.cfg.http
    hc = HypercornConfig()
    hc.bind = [str(http.addr)]
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
        bound: Bound = await nursery.start(run_relay, cfg, shutdown)
        _announce(cfg, bound)
        await shutdown.wait()
        # run_relay returns after its graceful shutdown; then stop the signal watcher.
    log.info("stopped")


async def _watch_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            shutdown.set()
            return


def _announce(cfg: Config, bound: Bound) -> None:
    http_url = bound.http[0] if bound.http else ""
    lines = [f"Atmosphere Relay ({'dev' if cfg.dev else 'production'}) state in {cfg.state_path.resolve()}"]
    for host, port in bound.submission:
        lines.append(f"  SMTP submission   {host}:{port}  (STARTTLS, then AUTH PLAIN/LOGIN)")
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
    if cfg.dev and bound.submission and http_url:
        store = open_store(cfg.store_url)
        try:
            creds = devsetup.ensure_demo_member(cfg, store)
        finally:
            store.close()
        host, port = bound.submission[0]
        lines.append(devsetup.first_message_hint(cfg, creds, http_url, f"{host}:{port}"))
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
