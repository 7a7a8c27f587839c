"""DNS records of member domains: what to publish, checking it, and the verification job (DESIGN §7).

- ``relay.dns.records``: ``records_for(...)`` -> ``[DnsRecord]`` and zone-file rendering (pure).
- ``relay.dns.checks``: ``check_domain(...)`` -> ``DomainReport`` of ``CheckResult`` (dnspython, async).
- ``relay.dns.verifier``: ``next_states``, ``DomainVerifier`` (check + periodic ``run``), ``check_once``.
"""

from relay.dns.checks import (
    CheckResult,
    DnsLookup,
    DnsLookupError,
    DomainReport,
    Status,
    TxtLookup,
    check_domain,
)
from relay.dns.records import DnsRecord, RecordKind, records_for, zone_file, zone_line
from relay.dns.verifier import DomainVerifier, UnknownDomain, check_once, expected_records, next_states

__all__ = [
    "CheckResult",
    "DnsLookup",
    "DnsLookupError",
    "DnsRecord",
    "DomainReport",
    "DomainVerifier",
    "RecordKind",
    "Status",
    "TxtLookup",
    "UnknownDomain",
    "check_domain",
    "check_once",
    "expected_records",
    "next_states",
    "records_for",
    "zone_file",
    "zone_line",
]
