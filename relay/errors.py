"""The relay's error hierarchy: each error knows its SMTP reply and its HTTP answer.

    RelayError                      451 4.3.0 / 500 INTERNAL (never shows internals)
    ├── AuthError
    │   ├── AuthRequired            530 5.7.0 / 400 AUTH_REQUIRED
    │   ├── InvalidDid              535 5.7.8 / 400 INVALID_DID
    │   ├── AuthFailed              535 5.7.8 / 401 AUTH_FAILED
    │   ├── AuthThrottled           454 4.7.0 / 429 AUTH_THROTTLED (+ Retry-After; too many failures)
    │   └── AuthBusy                454 4.7.0 / 503 AUTH_BUSY (+ Retry-After; bcrypt queue full)
    ├── MemberSuspended             521 5.7.1 / 403 MEMBER_SUSPENDED
    ├── DomainMismatch              550 5.1.0 / 403 DOMAIN_MISMATCH
    ├── SuppressedRecipient         550 5.7.1 / (a `rejected` entry over HTTP)
    ├── RateLimited                 451 4.7.1 / 429 RATE_LIMITED (+ Retry-After)
    ├── InvalidRequest              501 5.5.4 / 400 INVALID_REQUEST (names the field)
    ├── PayloadTooLarge             552 5.3.4 / 413 PAYLOAD_TOO_LARGE
    ├── QueueUnavailable            451 4.4.2 / 503 QUEUE_UNAVAILABLE (store down, queue full)
    └── InsufficientStorage         452 4.3.1 / 507 INSUFFICIENT_STORAGE (disk/spool full)

Policy code raises these; the SMTP and HTTP layers render them. The message text
is written for the user (it goes on the wire), so it must never carry internals.
"""

from __future__ import annotations

from relay.smtp.reply import Reply


class RelayError(Exception):
    smtp_code: int = 451
    smtp_enhanced: str = "4.3.0"
    http_status: int = 500
    code: str = "INTERNAL"
    default_message: str = "local error, try again later"

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        self.message = message or self.default_message
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def smtp_reply(self) -> Reply:
        return Reply(self.smtp_code, self.smtp_enhanced, self.message)

    def http_body(self) -> dict[str, object]:
        return {"error": self.message, "code": self.code}


class AuthError(RelayError):
    pass


class AuthRequired(AuthError):
    smtp_code, smtp_enhanced, http_status, code = 530, "5.7.0", 400, "AUTH_REQUIRED"
    default_message = "authentication required"


class InvalidDid(AuthError):
    smtp_code, smtp_enhanced, http_status, code = 535, "5.7.8", 400, "INVALID_DID"
    default_message = "not a valid DID (expected did:plc:... or did:web:...)"


class AuthFailed(AuthError):
    smtp_code, smtp_enhanced, http_status, code = 535, "5.7.8", 401, "AUTH_FAILED"
    default_message = "authentication failed"


class KeyRegenerated(AuthError):
    """The API key this SMTP session authenticated with was regenerated: the session ends (421)."""

    smtp_code, smtp_enhanced, http_status, code = 421, "4.7.0", 401, "AUTH_FAILED"
    default_message = "the API key of this session was regenerated, closing; authenticate with the new key"


class AuthThrottled(AuthError):
    """Too many authentication attempts from this address or for this DID (refused before bcrypt)."""

    smtp_code, smtp_enhanced, http_status, code = 454, "4.7.0", 429, "AUTH_THROTTLED"
    default_message = "too many failed authentications, try again later"


class AuthBusy(AuthError):
    """Every bcrypt thread is busy and the queue is full (RFC 4954 §6: temporary failure)."""

    smtp_code, smtp_enhanced, http_status, code = 454, "4.7.0", 503, "AUTH_BUSY"
    default_message = "temporary authentication failure, try again later"


class MemberSuspended(RelayError):
    smtp_code, smtp_enhanced, http_status, code = 521, "5.7.1", 403, "MEMBER_SUSPENDED"
    default_message = "member suspended"


class DomainMismatch(RelayError):
    smtp_code, smtp_enhanced, http_status, code = 550, "5.1.0", 403, "DOMAIN_MISMATCH"
    default_message = "sender domain is not enrolled under this DID"


class SuppressedRecipient(RelayError):
    smtp_code, smtp_enhanced, http_status, code = 550, "5.7.1", 422, "SUPPRESSED"
    default_message = "suppressed recipient"


class RateLimited(RelayError):
    smtp_code, smtp_enhanced, http_status, code = 451, "4.7.1", 429, "RATE_LIMITED"
    default_message = "rate limit reached"


class InvalidRequest(RelayError):
    smtp_code, smtp_enhanced, http_status, code = 501, "5.5.4", 400, "INVALID_REQUEST"
    default_message = "invalid request"


class PayloadTooLarge(RelayError):
    smtp_code, smtp_enhanced, http_status, code = 552, "5.3.4", 413, "PAYLOAD_TOO_LARGE"
    default_message = "message too big"


class HeaderTooLarge(RelayError):
    """The header section is over ``limits.header_size``: refused whole, never judged by a prefix."""

    smtp_code, smtp_enhanced, http_status, code = 552, "5.3.4", 400, "HEADER_TOO_LARGE"
    default_message = "header section too large"


class QueueUnavailable(RelayError):
    smtp_code, smtp_enhanced, http_status, code = 451, "4.4.2", 503, "QUEUE_UNAVAILABLE"
    default_message = "queue temporarily unavailable, try again later"


class InsufficientStorage(RelayError):
    smtp_code, smtp_enhanced, http_status, code = 452, "4.3.1", 507, "INSUFFICIENT_STORAGE"
    default_message = "insufficient system storage, try again later"
