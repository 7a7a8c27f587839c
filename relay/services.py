"""The running relay's shared services, built once by the supervisor and handed to the layers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from relay.acceptor import Acceptor
from relay.apikey import ApiKeyCache
from relay.auth import Authenticator
from relay.config import Config
from relay.delivery.scheduler import Scheduler
from relay.dns.verifier import DomainVerifier
from relay.eventbus import EventBus
from relay.labeler import Labeler
from relay.metrics import RelayMetrics
from relay.reputation import Reputation
from relay.store.aio import AsyncStore
from relay.store.writer import StatusWriter
from relay.webhooks import WebhookDispatcher
from spool import Spool


@dataclass
class Bound:
    """Where the running relay listens (printed at start, used by tests)."""

    submission: list[tuple[str, int]] = field(default_factory=list)
    submissions: list[tuple[str, int]] = field(default_factory=list)  # implicit TLS (port 465)
    http: list[str] = field(default_factory=list)
    capture: list[tuple[str, int]] = field(default_factory=list)
    inbound: list[tuple[str, int]] = field(default_factory=list)
    dev: bool = False  # started with --dev: `atmos admin` reads this to load the config the same way

    def as_json(self) -> str:
        return json.dumps({"dev": self.dev, "submission": [f"{h}:{p}" for h, p in self.submission],
                           "submissions": [f"{h}:{p}" for h, p in self.submissions], "http": self.http,
                           "inbound": [f"{h}:{p}" for h, p in self.inbound],
                           "capture": [f"{h}:{p}" for h, p in self.capture]})

    def public_url(self, cfg: Config) -> str:
        """``cfg.public_url``, with the HTTP port actually bound when the configuration said port 0."""
        if cfg.public_url.endswith(":0") and self.http:
            return self.http[0]
        return cfg.public_url

    def smtp_ports(self, cfg: Config) -> tuple[int, int]:
        """(STARTTLS submission, implicit TLS) ports as bound; the configured ones before binding."""
        starttls = self.submission[0][1] if self.submission else cfg.smtp.submission_addr.port
        implicit = self.submissions[0][1] if self.submissions else cfg.smtp.submissions_addr.port
        return starttls, implicit


@dataclass(slots=True)
class Services:
    cfg: Config
    store: AsyncStore
    spool: Spool
    writer: StatusWriter
    keys: ApiKeyCache
    auth: Authenticator
    acceptor: Acceptor
    scheduler: Scheduler | None = None
    verifier: DomainVerifier | None = None
    # The operator event stream (/admin/ws) and the counters behind /metrics; the supervisor passes the
    # instances it also gave the acceptor and the scheduler.
    bus: EventBus = field(default_factory=EventBus)
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    labeler: Labeler | None = None
    reputation: Reputation | None = None  # rate limits, suspension; None in tests that build Services bare
    bound: Bound = field(default_factory=Bound)  # where the listeners are bound (real ports, also for port 0)
    webhooks: WebhookDispatcher | None = None  # member webhooks; PUT/DELETE /member/webhook call forget()
