"""Parsing what strangers send (bounces, complaints, reports): the wrappers that keep a hostile message
from crashing the inbound path. The stdlib ``email`` package and our own parsers raise all kinds of
exceptions on malformed input (IndexError, LookupError, RecursionError, ...); each parser here raises
its one typed error instead, naming the cause.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from typing import TypeVar

from relay.mail.headers import header_size

T = TypeVar("T")
HEADER_PEEK = 256 * 1024  # what report_type reads of a message: the header section lies in it


def parse_untrusted(parse: Callable[[bytes], T], data: bytes, error: type[ValueError], what: str) -> T:
    """``parse(data)``; ``error`` raised by it passes, any other exception becomes ``error`` naming ``what``
    was expected ("a DSN", "an ARF report") and the cause."""
    try:
        return parse(data)
    except error:
        raise
    except Exception as exc:  # hostile input must not crash the inbound path
        raise error(f"cannot parse as {what}: {type(exc).__name__}: {exc}") from exc


def report_type(data: bytes) -> str | None:
    """The ``report-type`` of a top-level ``multipart/report`` (RFC 6522 §3), lower-cased; None for any
    other message, or one whose header section cannot be parsed. A cheap check: the header section only."""
    head = data[:HEADER_PEEK]
    try:
        msg = email.message_from_bytes(head[: header_size(head)], policy=email.policy.compat32)
        if msg.get_content_type() != "multipart/report":
            return None
        return str(msg.get_param("report-type", "")).lower()
    except Exception:  # a header section the parser chokes on is no report
        return None


__all__ = ["parse_untrusted", "report_type"]
