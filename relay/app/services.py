"""The running relay's shared services, built once by the supervisor and handed to the layers.

Frozen: the supervisor constructs every service first, then this, then starts them in dependency
order (relay.app.supervisor); nothing is attached to it afterwards, so a handler never has to probe
for a field that may appear later. A field that is ``None`` is a part this relay does not run
(no scheduler in a test that builds Services bare, no DNS verifier in dev without nameservers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from relay.accept.acceptor import Acceptor
from relay.cluster.identity import NodeIdentity
from relay.cluster.node import Node
from relay.config import Config
from relay.delivery.scheduler import Scheduler
from relay.dns.verifier import DomainVerifier
from relay.labeler import Labeler
from relay.members.apikey import ApiKeyCache
from relay.members.auth import Authenticator
from relay.members.webhooks import WebhookDispatcher
from relay.oauth import OAuthClient
from relay.operator.eventbus import EventBus
from relay.operator.metrics import RelayMetrics
from relay.reputation import Reputation
from relay.store.aio import AsyncStore
from relay.store.writer import StatusWriter
from spool import Spool


@dataclass(frozen=True, slots=True)
class Bound:
    """Where the running relay listens: bound before any service starts, so port 0 is known to all
    (printed at start, written to state/run.json for `atmos admin`, shown on /docs and /account)."""

    submission: tuple[tuple[str, int], ...] = ()
    submissions: tuple[tuple[str, int], ...] = ()  # implicit TLS (RFC 8314, port 465)
    http: tuple[str, ...] = ()
    capture: tuple[tuple[str, int], ...] = ()
    inbound: tuple[tuple[str, int], ...] = ()
    dev: bool = False  # started with --dev: `atmos admin` reads this to load the config the same way
    node: str = ""  # the node that bound them (relay.cluster); a --workers parent names all of its own
    nodes: tuple[str, ...] = ()

    def as_json(self) -> str:
        return json.dumps({"dev": self.dev, "node": self.node, "nodes": list(self.nodes or (self.node,)),
                           "submission": [f"{h}:{p}" for h, p in self.submission],
                           "submissions": [f"{h}:{p}" for h, p in self.submissions],
                           "http": list(self.http), "inbound": [f"{h}:{p}" for h, p in self.inbound],
                           "capture": [f"{h}:{p}" for h, p in self.capture]})

    def smtp_ports(self, cfg: Config) -> tuple[int, int]:
        """(STARTTLS submission, implicit TLS) ports as bound; the configured ones before binding."""
        starttls = self.submission[0][1] if self.submission else cfg.smtp.submission_addr.port
        implicit = self.submissions[0][1] if self.submissions else cfg.smtp.submissions_addr.port
        return starttls, implicit


@dataclass(frozen=True, slots=True)
class Services:
    cfg: Config
    store: AsyncStore
    spool: Spool
    writer: StatusWriter
    keys: ApiKeyCache
    auth: Authenticator
    acceptor: Acceptor
    scheduler: Scheduler | None = None
    verifier: DomainVerifier | None = None  # DNS checks; None where none run (dev without nameservers)
    # The operator event stream (/admin/ws) and the counters behind /metrics; the supervisor passes the
    # instances it also gave the acceptor and the scheduler.
    bus: EventBus = field(default_factory=EventBus)
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    labeler: Labeler | None = None  # serves did.json and labels; runs its checks only beside a verifier
    reputation: Reputation | None = None  # rate limits, suspension; None in tests that build Services bare
    bound: Bound = field(default_factory=Bound)  # where the listeners are bound (real ports, also for port 0)
    webhooks: WebhookDispatcher | None = None  # member webhooks; PUT/DELETE /member/webhook call forget()
    oauth: OAuthClient | None = None  # sign-in with an atproto handle (/enroll); keys made before start
    # This process among the relay's nodes (relay.cluster).
    node: NodeIdentity = field(default_factory=lambda: NodeIdentity("local", 1))
    cluster: Node | None = None  # heartbeat, jobs lease; None in tests that build Services bare
