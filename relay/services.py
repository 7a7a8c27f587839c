"""The running relay's shared services, built once by the supervisor and handed to the layers."""

from __future__ import annotations

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
    webhooks: WebhookDispatcher | None = None  # member webhooks; PUT/DELETE /member/webhook call forget()
