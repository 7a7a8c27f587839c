"""``atmos serve``: one Trio root nursery, services started in dependency order (DESIGN §2).

Three steps, in this order (``run_relay``):

1. bind every listener (so port 0's real port is known) and do the blocking set-up work in worker
   threads: the dev TLS certificate, the operator DKIM key, the labeler and OAuth keys, the dev demo
   member (bcrypt, DKIM keys);
2. construct every service and freeze ``Services`` (relay.app.services): nothing is set on a service once
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

import contextlib
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig

from relay.accept.acceptor import Acceptor
from relay.accept.submission import SubmissionHandler
from relay.app.listeners import Sockets, inherited
from relay.app.services import Bound, Services
from relay.app.startup import announce_ready, as_running, dev_capture, prepare_state
from relay.cluster.identity import machine_name, worker_name
from relay.cluster.layout import adopt_legacy_spool
from relay.cluster.node import Node, register
from relay.cluster.workers import NODE_ENV, READY_ENV, default_workers, serve_workers
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
from relay.inbound.handler import InboundHandler
from relay.inbound.service import make_inbound_server
from relay.labeler import Labeler
from relay.labeler.firehose import Firehose
from relay.mail.operatorkey import OperatorKeys
from relay.members.apikey import ApiKeyCache
from relay.members.auth import Authenticator
from relay.members.webhooks import WebhookDispatcher
from relay.net.egress import Egress
from relay.oauth import client_from_config
from relay.oauth.client import PENDING_TTL
from relay.operator.eventbus import EventBus
from relay.operator.eventstream import node_command, reputation_hooks, run_publisher
from relay.operator.metrics import RelayMetrics
from relay.reputation import Reputation
from relay.smtp.limits import Limits
from relay.smtp.server import BufferBudget, SmtpServer, SmtpServerConfig
from relay.store import open_store
from relay.store.aio import AsyncStore
from relay.store.base import Store
from relay.store.mirror import StatusMirror
from relay.store.writer import StatusWriter
from spool import Spool, SpoolError
from spool.segment import make_dirs

log = logging.getLogger("relay.app.supervisor")


async def run_relay(
    cfg: Config, shutdown: trio.Event, *, sockets: Sockets | None = None, node_name: str = "",
    announce: bool = True, task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One node. ``sockets``: listeners bound by a ``--workers`` parent (else bound here); ``node_name``:
    the node's name (default ``<node.name>-1``); ``announce``: print the URLs and write state/run.json
    (a parent does that once for all its nodes)."""
    await trio.to_thread.run_sync(make_dirs, cfg.state_path)  # durable names, before anything goes in
    cfg.make_state_dir()  # 0700, an existing state dir tightened too (store, spool, secrets live there)
    sync_store = open_store(cfg.store_url, pool_size=cfg.store.pool_size)
    store = AsyncStore(sync_store)
    try:
        # 1. Bind every listener and do the blocking set-up work (key generation, the dev TLS cert and
        #    demo member's bcrypt hash) in worker threads, before anything serves.
        if sockets is None:
            sockets = Sockets.bind(cfg, capture=dev_capture(cfg))
        identity = await register(store, node_name or worker_name(machine_name(cfg.node.name), 1))
        await trio.to_thread.run_sync(adopt_legacy_spool, cfg.state_path, identity)
        listeners = sockets.listeners()
        bound = sockets.bound(cfg.dev, identity.name)
        cfg = as_running(cfg, bound)
        prepared = await store.call(partial(prepare_state, cfg))
        tls, labeler_key, demo = prepared.tls, prepared.labeler_key, prepared.demo
        operator = OperatorKeys(cfg.state_path, cfg.secret_key)
        oauth = await trio.to_thread.run_sync(partial(client_from_config, cfg, store=store))

        # 2. Construct every service, then freeze Services: nothing is attached to a running service.
        writer = StatusWriter(store)
        # The store mirrors the spool (relay.store.mirror): recovery replays to it whatever it had
        # not durably seen, and compaction never deletes what it has not seen yet.
        # Each node has its own spool and its own ids (relay.cluster.identity) and mark in the store.
        mark = await store.spool_mark(identity.number)
        spool = Spool(identity.spool_dir(cfg.state_path), segment_bytes=cfg.spool.segment_bytes,
                      max_bytes=cfg.spool.max_bytes or None, reserve_bytes=cfg.spool.reserve_bytes,
                      mirror=StatusMirror(writer, count_outcomes=True, store_mark=mark, node=identity.number),
                      store_mark=mark, first_id=identity.first_id)
        keys = ApiKeyCache(bcrypt_threads=cfg.auth.bcrypt_threads, bcrypt_queue=cfg.auth.bcrypt_queue)
        # The operator event stream: made before its publishers (acceptor, scheduler), which never wait on it.
        bus, metrics = EventBus(), RelayMetrics()
        # Rate counters and suspensions; delivery outcomes are counted by the mirror; automatic
        # suspensions and complaints go onto the event stream.
        # Budget leases are held under this node's name (relay.reputation.limiter: caps exact across nodes).
        reputation = Reputation.from_config(store, cfg, outcomes_in_store=True, node=identity.name,
                                            **reputation_hooks(bus))
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
        firehose = None
        if verifier is not None and cfg.labeler.firehose_url:
            firehose = Firehose(cfg.labeler.firehose_url, store, labeler.request_check,
                                max_frame=cfg.labeler.firehose_max_frame, egress=Egress.from_config(cfg))
        node = Node(store, identity, cfg.node, partial(_node_stats, spool, scheduler, acceptor))
        services = Services(cfg=cfg, store=store, spool=spool, writer=writer, keys=keys, auth=auth,
                            acceptor=acceptor, scheduler=scheduler, verifier=verifier, bus=bus, metrics=metrics,
                            labeler=labeler, reputation=reputation, webhooks=webhooks, oauth=oauth, bound=bound,
                            node=identity, cluster=node)
        # Once per cluster, on the node holding the jobs lease (relay.cluster.node): the periodic
        # re-checks, the firehose, retention, and the webhook outbox's deliveries.
        jobs: list[Callable[[], Awaitable[None]]] = [partial(_retention, store), webhooks.deliver]
        if verifier is not None:
            jobs += [verifier.run, labeler.run]
        if firehose is not None:
            jobs.append(firehose.run)
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
            await root.start(node.run)  # registered above; heartbeats, the jobs lease
            if sink is not None:
                await root.start(partial(sink.serve, listeners["capture"]))
            await root.start(pool.run)
            if planner.sts is not None:
                await root.start(planner.sts.run)  # MTA-STS policies refreshed in the background
            await root.start(scheduler.run)
            await root.start(partial(webhooks.run, deliver=False))  # events into the outbox (jobs deliver)
            await root.start(node.serve_commands, partial(node_command, services))  # other nodes' asks
            if tls_reports:
                # Dev without test nameservers sends no DNS queries out, so no TLS reports either.
                await root.start(tls_reporter(cfg, tls_counter, store, acceptor).run)
            await root.start(run_publisher, services)  # QueueDepth, Throughput, Warming, Heartbeat
            await root.start(smtp.serve_listeners, listeners["submission"])
            await root.start(smtps.serve_listeners, listeners["submissions"])
            await root.start(inbound.serve_listeners, listeners["inbound"])
            http_stop, http_done = trio.Event(), trio.Event()
            await root.start(_serve_http, services, sockets.http, http_stop, http_done)
            run_file = cfg.state_path / "run.json"
            if announce:
                run_file.write_text(bound.as_json())  # lets `atmos admin` find a relay bound to port 0
            await root.start(partial(node.while_leading, *jobs))
            task_status.started(bound)
            if announce:
                announce_ready(cfg, bound, demo)
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
            if announce:
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
            await store.call(Store.purge_node_commands, now - 24 * 3600)
            await store.call(partial(_purge_oauth, older_than=now - PENDING_TTL))
            if purged:
                log.info("retention: purged %d terminal message rows", purged)
        except Exception:
            log.exception("retention purge failed; will try again")
        await trio.sleep(every)


def _node_stats(spool: Spool, scheduler: Scheduler, acceptor: Acceptor) -> dict[str, Any]:
    """What this node's heartbeat tells the others (``atmos admin nodes``, /metrics, the console)."""
    st = spool.stats()
    return {"pid": os.getpid(), "queue_messages": st.live_messages, "queue_recipients": st.live_recipients,
            "spool_bytes": st.bytes, "accepted": acceptor.accepted_messages, "in_flight": scheduler.in_flight,
            "delivered": scheduler.delivered, "deferred": scheduler.deferred, "bounced": scheduler.bounced}


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


async def _main(cfg: Config, sockets: Sockets | None, node_name: str, ready_fd: int | None) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown)
        bound = await nursery.start(partial(run_relay, cfg, shutdown, sockets=sockets, node_name=node_name,
                                            announce=ready_fd is None))
        if ready_fd is not None:  # a --workers parent waits for this line (relay.cluster.workers)
            with contextlib.suppress(OSError):  # a parent that stopped listening: serve on regardless
                os.write(ready_fd, bound.as_json().encode() + b"\n")
            os.close(ready_fd)
        await shutdown.wait()
        # run_relay returns after its graceful shutdown; then stop the signal watcher.
    log.info("stopped")


async def _watch_signals(shutdown: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            shutdown.set()
            return


def serve_forever(cfg: Config, *, sockets: Sockets | None = None, node_name: str = "",
                  ready_fd: int | None = None) -> int:
    """One node in this process; ``sockets``/``node_name``/``ready_fd`` when started by a --workers parent."""
    try:
        trio.run(_main, cfg, sockets, node_name, ready_fd)
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


__all__ = ["Bound", "partial", "run_relay", "serve", "serve_forever"]


def serve(cfg: Config, *, workers: int | None, argv: Sequence[str], log_level: str) -> int:
    """``atmos serve``: one node in this process, or a parent of ``workers`` node processes
    (relay.cluster.workers); a node started by such a parent finds its sockets and name in the
    environment."""
    node = os.environ.get(NODE_ENV, "")
    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s %(levelname)s {node + ' ' if node else ''}%(name)s: %(message)s")
    sockets = inherited()
    if sockets is not None:
        return serve_forever(cfg, sockets=sockets, node_name=node, ready_fd=int(os.environ[READY_ENV]))
    count = workers if workers is not None else default_workers(cfg)
    if not 1 <= count <= 256:
        print(f"atmos serve: --workers: 1 to 256, got {count}", file=sys.stderr)
        return 2
    return serve_forever(cfg) if count == 1 else serve_workers(cfg, count, argv)
