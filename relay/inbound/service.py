"""The inbound SMTP server (``smtp.inbound_addr``, port 25 in production) around an InboundHandler.

    handler = InboundHandler(cfg, store, acceptor, events)
    server = make_inbound_server(cfg, handler, ssl_context=ctx)   # ctx None: no STARTTLS
    addresses = await nursery.start(server.serve)
    ...
    await server.shutdown(cfg.smtp.shutdown_grace)

No AUTH (not offered, AUTH answers 502), STARTTLS offered when ``ssl_context`` is given, message
size limit ``inbound.message_size`` (SIZE advertised, 552 past it), timeouts, budgets and connection
caps from ``[smtp]`` (the gate is the first MAIL: ``pre_mail_timeout`` / ``pre_mail_time``).
``host``/``port`` override ``smtp.inbound_addr`` (tests bind port 0).
"""

from __future__ import annotations

import ssl

from relay.config import Config
from relay.smtp.handler import SessionHandler
from relay.smtp.limits import Limits
from relay.smtp.server import BufferBudget, RefusalCounter, SmtpServer, SmtpServerConfig


def inbound_server_config(
    cfg: Config, *, ssl_context: ssl.SSLContext | None = None, host: str | None = None, port: int | None = None
) -> SmtpServerConfig:
    return SmtpServerConfig(
        host=cfg.smtp.inbound_addr.host if host is None else host,
        port=cfg.smtp.inbound_addr.port if port is None else port,
        hostname=cfg.banner_host,
        ssl_context=ssl_context,
        auth_enabled=False,
        require_auth=False,
        require_tls_for_auth=False,
        limits=Limits(max_message_size=cfg.inbound.message_size, max_errors=cfg.smtp.error_limit,
                      max_junk_commands=cfg.smtp.junk_command_limit),
        command_timeout=cfg.smtp.command_timeout,
        data_block_timeout=cfg.smtp.data_timeout,
        max_connections=cfg.smtp.max_connections,
        max_connections_per_ip=cfg.smtp.max_connections_per_ip,
        gate_timeout=cfg.smtp.pre_mail_timeout,
        gate_time=cfg.smtp.pre_mail_time,
        session_time=cfg.smtp.session_time,
        shutdown_grace=cfg.smtp.shutdown_grace,
        name="inbound",
    )


def make_inbound_server(
    cfg: Config,
    handler: SessionHandler,
    *,
    ssl_context: ssl.SSLContext | None = None,
    host: str | None = None,
    port: int | None = None,
    buffers: BufferBudget | None = None,
    refusals: RefusalCounter | None = None,
) -> SmtpServer:
    config = inbound_server_config(cfg, ssl_context=ssl_context, host=host, port=port)
    return SmtpServer(config, handler, buffers=buffers, refusals=refusals)
