"""What happens once before a relay serves, shared by a single node (relay.app.supervisor) and the
``--workers`` parent (relay.cluster.workers): the first-start set-up, the config as bound, the
announcement of where it listens."""

from __future__ import annotations

import dataclasses
import logging
import ssl
from dataclasses import dataclass
from typing import Any

from relay.app import devsetup
from relay.app.services import Bound
from relay.app.tlscert import server_context
from relay.config import Config
from relay.labeler import LabelerKey
from relay.labeler.service import key_path as labeler_key_path
from relay.mail.operatorkey import OperatorKeys
from relay.oauth import ClientKeys
from relay.store.base import Store

log = logging.getLogger("relay.app.supervisor")


def dev_capture(cfg: Config) -> bool:
    """Dev without a relayhost: everything goes to the built-in capture sink, so a newcomer sees
    send -> deliver offline."""
    return cfg.dev and not cfg.delivery.relayhost and cfg.delivery.capture


def as_running(cfg: Config, bound: Bound) -> Config:
    """The config with the public URL that names the HTTP port really bound (port 0 in tests), so links
    in mail, the OAuth client id and the labeler's DID document are right from the start."""
    if cfg.http.addr.port == 0 and cfg.public_url.endswith(":0"):
        return dataclasses.replace(cfg, public_url=bound.http[0])
    return cfg


@dataclass(frozen=True, slots=True)
class Prepared:
    tls: ssl.SSLContext
    labeler_key: LabelerKey
    demo: dict[str, Any] | None  # the dev demo member's credentials


def prepare_state(cfg: Config, store: Store) -> Prepared:
    """The blocking first-start work, done once before anything serves: the dev TLS certificate, the
    operator DKIM key, the labeler and OAuth client keys, the dev demo member (bcrypt, DKIM keys). A
    ``--workers`` parent does it before it starts the nodes, so they never race to create a key; a node
    uses what it returns."""
    tls = server_context(cfg)
    OperatorKeys(cfg.state_path, cfg.secret_key).current()
    labeler_key = LabelerKey.load_or_create(labeler_key_path(cfg))
    ClientKeys.load_or_create(cfg.state_path / "oauth")  # what client_from_config loads
    return Prepared(tls, labeler_key, devsetup.ensure_demo_member(cfg, store) if cfg.dev else None)


def announce_ready(cfg: Config, bound: Bound, demo: dict[str, Any] | None) -> None:
    http_url = bound.http[0] if bound.http else ""
    nodes = ", ".join(bound.nodes or (bound.node,))
    lines = [f"Atmosphere Relay ({'dev' if cfg.dev else 'production'}) state in {cfg.state_path.resolve()}",
             f"  nodes             {nodes}"]
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


__all__ = ["Prepared", "announce_ready", "as_running", "dev_capture", "prepare_state"]
