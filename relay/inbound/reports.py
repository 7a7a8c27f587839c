"""Reading bounces, complaints and TLS reports off the event loop, with caps that fit what a report needs.

``email.message_from_bytes`` over a hostile message is long CPU work: a 10 MiB ``multipart/report``
of ~300k tiny parts kept the Trio thread busy for ~7 s, stalling SMTP, HTTP and delivery. So the
parsers (``relay.inbound.bounces.analyze``, ``relay.inbound.arf.parse_arf``) run in worker threads
behind one ``CapacityLimiter`` (``inbound.parse_threads``), and only on what a report needs:

* the first ``inbound.report_parse_bytes`` (256 KiB): an RFC 3464 DSN and an RFC 5965 ARF report
  put their machine-readable part before the returned message, and the enclosed headers come
  right after it;
* at most ``inbound.report_parts`` MIME parts (a DSN has 2-3, an ARF report 3): more boundary
  lines than that in those bytes and the message is not parsed at all (not a bounce / not ARF).

The message itself is never truncated: whoever it is forwarded to gets all of it.
"""

from __future__ import annotations

import functools
import re

import trio

from relay.delivery.tlsrpt import ReportError, parse_inbound
from relay.inbound.arf import ArfParseError, ArfReport, is_arf, parse_arf
from relay.inbound.bounces import Bounce, analyze
from relay.store.rows import InboundTlsReport

# A line that may be a MIME boundary delimiter (RFC 2046 §5.1.1: "--" boundary at the start of a line).
_BOUNDARY_LINE = re.compile(rb"^--", re.MULTILINE)


class ReportReader:
    def __init__(self, *, threads: int = 2, max_bytes: int = 256 * 1024, max_parts: int = 64) -> None:
        self._limiter = trio.CapacityLimiter(threads)
        self.max_bytes = max_bytes
        self.max_parts = max_parts

    def head(self, data: bytes) -> bytes | None:
        """The bytes to parse, or None when the message has too many parts to be a report."""
        head = data[: self.max_bytes]
        # +1: the closing delimiter of the outermost multipart is a boundary line too.
        if len(_BOUNDARY_LINE.findall(head, 0)) > 2 * (self.max_parts + 1):
            return None
        return head

    async def bounce(self, data: bytes, recipient: str | None, *, null_sender: bool) -> Bounce | None:
        """``analyze`` in a worker thread; None also when the message is too large a MIME tree."""
        head = self.head(data)
        if head is None:
            return None
        call = functools.partial(analyze, head, recipient, null_sender=null_sender)
        return await trio.to_thread.run_sync(call, limiter=self._limiter)

    async def arf(self, data: bytes) -> ArfReport | None:
        """The ARF report, None when it is not one; raises ``ArfParseError`` when it cannot be read."""
        head = self.head(data)
        if head is None:
            raise ArfParseError(f"more than {self.max_parts} MIME parts: not read as a feedback report")
        return await trio.to_thread.run_sync(_read_arf, head, limiter=self._limiter)


    async def tls_report(self, data: bytes, *, now: float) -> InboundTlsReport:
        """A TLS report (RFC 8460 §5.3) in a worker thread; raises ``ReportError``. The whole message is
        read (the report is its last part; the inbound size limit bounds it), under the same part cap; the
        decompressed report has its own cap (relay.delivery.tlsrpt.MAX_INBOUND_BYTES)."""
        if len(_BOUNDARY_LINE.findall(data, 0)) > 2 * (self.max_parts + 1):
            raise ReportError(f"more than {self.max_parts} MIME parts: not read as a TLS report")
        return await trio.to_thread.run_sync(functools.partial(parse_inbound, data, now=now), limiter=self._limiter)


def _read_arf(data: bytes) -> ArfReport | None:
    return parse_arf(data) if is_arf(data) else None
