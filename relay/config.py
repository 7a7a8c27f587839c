"""One frozen configuration, read from one TOML file (DESIGN §3).

Unknown keys and bad values are errors that name the key (``ConfigError``).
Secrets never live in the file: ``ATMOS_ADMIN_TOKEN`` and ``ATMOS_SECRET_KEY``
come from the environment, or in ``--dev`` are generated once into
``<state_dir>/secrets/`` with mode 0600.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import secrets
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20


class ConfigError(Exception):
    """A configuration problem; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class Addr:
    host: str
    port: int

    @classmethod
    def parse(cls, value: str, key: str) -> Addr:
        host, sep, port = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{key}: expected host:port, got {value!r}")
        host = host.strip("[]")  # [::1]:25
        try:
            number = int(port)
        except ValueError:
            raise ConfigError(f"{key}: port {port!r} is not a number") from None
        if not 0 <= number <= 65535:
            raise ConfigError(f"{key}: port {number} out of range 0-65535")
        return cls(host, number)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    submission_addr: Addr = Addr("127.0.0.1", 2587)
    submissions_addr: Addr = Addr("127.0.0.1", 2465)  # implicit TLS (RFC 8314 §3.3); production 0.0.0.0:465
    inbound_addr: Addr = Addr("127.0.0.1", 2525)
    hostname: str = ""  # banner/EHLO name; defaults to operator_domain
    max_connections: int = 2000
    max_connections_per_ip: int = 50  # per listener and address or IPv6 /64 (smtpd_client_connection_count_limit)
    command_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7 server timeout
    data_timeout: float = 180.0  # §4.5.3.2.5 DATA block
    pre_auth_timeout: float = 60.0  # submission: idle limit before AUTH succeeds
    pre_auth_time: float = 120.0  # submission: AUTH must succeed this soon after connecting
    pre_mail_timeout: float = 60.0  # inbound: idle limit before the first MAIL
    pre_mail_time: float = 300.0  # inbound: the first MAIL must come this soon after connecting
    session_time: float = 3600.0  # any session, however busy
    error_limit: int = 20  # errors and refused MAIL/RCPT before 421 (smtpd_hard_error_limit)
    junk_command_limit: int = 100  # NOOP/RSET/VRFY/HELP before each counts as an error (smtpd_junk_command_limit)
    data_buffer_bytes: int = 256 * MiB  # received mail held in memory by all sessions together
    shutdown_grace: float = 10.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    addr: Addr = Addr("127.0.0.1", 8080)
    head_timeout: float = 5.0  # a request head (and the next one on a keep-alive connection) within this
    read_timeout: float = 60.0  # each read from a client; websockets stay alive on websocket_ping
    websocket_ping: float = 20.0  # server pings idle websockets (RFC 6455 §5.5.2); pongs count as reads
    websocket_max_message: int = 64 * 1024  # bytes per message a client may send on /admin/ws or the labeler


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert_file: str = ""  # empty in dev: a self-signed cert is generated into state_dir/tls/
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    port: int = 25
    relayhost: str = ""  # optional smarthost: "[host]:port" (no MX lookup) or "host:port"
    nameservers: tuple[str, ...] = ()  # "ip" or "ip:port"; empty: the system resolver
    # may (opportunistic) | verify | none | dane (Postfix smtp_tls_security_level); empty: dane when
    # dnssec is on, else may. MTA-STS applies on top of may/dane (relay/delivery/tlspolicy.py).
    tls: str = ""
    dnssec: bool = False  # nameservers are a local DNSSEC validator: trust its AD bit (smtp_dns_support_level)
    tls_ca_file: str = ""  # trust store for verified TLS (MX hosts, MTA-STS policy hosts); empty: the system's
    mta_sts: bool = True  # honour recipient domains' MTA-STS policies (RFC 8461)
    mta_sts_timeout: float = 15.0  # one policy fetch, all of it (DNS, connect, TLS, HTTP)
    mta_sts_max_bytes: int = 65536  # a policy larger than this is invalid
    mta_sts_cache_entries: int = 10000  # policies kept in memory (least recently used dropped)
    tls_reports: bool = True  # send daily TLS reports (RFC 8460) to destinations that publish _smtp._tls
    max_concurrency: int = 100  # deliveries in flight relay-wide
    per_destination: int = 20  # connections per destination domain (Postfix default_destination_concurrency_limit)
    initial_concurrency: int = 5  # a destination starts here, +1 per answered attempt (initial_destination_concurrency)
    per_host: int = 20  # connections per MX address, whichever domains it serves
    slow_concurrency: int = 20  # slots all destinations that are timing out share
    min_timeout: float = 60.0  # floor of the shortened timeouts for MX hosts that keep hanging
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0)
    capture: bool = True  # dev only, without relayhost: deliver to the built-in capture sink
    shutdown_grace: float = 10.0  # in-flight deliveries get this long at SIGTERM


    @property
    def tls_level(self) -> str:
        """``tls`` with the default filled in: dane when a validator is configured, else may."""
        return self.tls or ("dane" if self.dnssec else "may")


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """What members publish (DESIGN §7) and how the relay checks it."""

    relay_ips: tuple[str, ...] = ()  # SPF: "v=spf1 ip4:<ip> -all" when no spf_include
    spf_include: str = ""  # SPF: "include:<this>" (the operator's SPF record) instead of ip4/ip6
    mx_host: str = ""  # MX members may point at the relay for reply forwarding; default operator_domain
    nameservers: tuple[str, ...] = ()  # for checks; empty: delivery.nameservers, then the system resolver
    recheck_interval: float = 86400.0  # verified domains re-checked daily
    pending_recheck_interval: float = 300.0  # pending domains retried every few minutes
    pending_claim_ttl: float = 7 * 86400.0  # a domain claim not proved by DNS within this expires


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    hourly: int = 100
    daily: int = 1000
    relay_per_minute: int = 500
    warming_tiers: tuple[tuple[int, int, int], ...] = ((0, 5, 20), (7, 10, 50))  # (from day, hour, day)
    message_size: int = 25 * MiB
    # /v1/send: attachments up to 10 MiB decoded (Postmark's limit); their base64 in JSON is 4/3 of that.
    attachment_bytes: int = 10 * MiB
    json_body: int = 14 * MiB
    recipients_per_message: int = 100
    header_size: int = 256 * 1024  # a header section longer than this is refused (552 5.3.4), never judged by a prefix


@dataclass(frozen=True, slots=True)
class SuspensionConfig:
    """Automatic suspension per DID over a rolling window (DESIGN §6)."""

    window: float = 86400.0
    max_bounce_rate: float = 0.05  # bounces / sends
    max_complaint_rate: float = 0.0008  # complaints / sends
    min_sends: int = 20  # below this volume no rate is judged
    min_complaints: int = 3  # fewer distinct complaints than this never suspend, whatever the rate
    suppress_hard_bounces: bool = False  # members may opt in: hard-bounced recipients join the suppression list


@dataclass(frozen=True, slots=True)
class InboundConfig:
    """Port 25: DSNs to VERP addresses, ARF complaints, replies to member domains (DESIGN §6)."""

    operator_inbox: str = ""  # where postmaster@/abuse@/fbl@ of the operator domain go; empty: logged only
    fbl_local_part: str = "fbl"
    tlsrpt_local_part: str = "tls-reports"  # TLS reports (RFC 8460) about the operator domain; shown on the console
    per_ip_per_minute: int = 30
    per_ip_burst: int = 10
    message_size: int = 10 * MiB
    # Where ARF reports are believed from: a domain whose DKIM signature on the report verifies
    # ("fbl.example.net", subdomains included) or a network the report arrives from ("192.0.2.0/24").
    fbl_sources: tuple[str, ...] = ()
    forward_daily: int = 200  # forwarded replies per member per UTC day
    forward_per_ip_per_hour: int = 30  # forwarded replies accepted from one source address per hour
    srs_daily: int = 5  # delivery reports relayed to one SRS0 address per UTC day
    forward_confirm_ttl: float = 3 * 86400.0  # how long a forward-to confirmation link stays valid
    forward_confirm_daily: int = 5  # confirmation mails a member may have sent per day (no mail-bombing)
    report_size: int = 1 * MiB  # size limit of a transaction to a VERP (bounce) or FBL address
    report_parse_bytes: int = 256 * 1024  # a DSN or ARF report is parsed from its first this many bytes
    report_parts: int = 64  # MIME parts beyond which a report is not parsed at all
    parse_threads: int = 2  # worker threads parsing reports (off the event loop)


@dataclass(frozen=True, slots=True)
class TestingConfig:
    """Settings only the test suite uses. Never set them on a relay that faces the internet."""

    __test__ = False  # not a pytest test class, whatever its name

    # Outbound connections may reach loopback addresses (and http:// on loopback): the test peers
    # (sink MX, webhook receivers, local PDS/PLC) all listen there. Other non-global ranges stay refused.
    allow_loopback_peers: bool = False


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Failed-authentication limits (SMTP AUTH and the HTTP API key), checked before bcrypt runs."""

    per_ip_per_minute: float = 10.0  # bcrypt checks per client address (refunded when the key is right)
    per_ip_burst: int = 10
    per_ip_concurrency: int = 1  # bcrypt checks one address may have running or queued at once
    per_did_per_minute: float = 30.0  # bcrypt checks per DID, from anywhere
    per_did_burst: int = 30
    bcrypt_threads: int = 2  # at most this many bcrypt checks at once
    bcrypt_queue: int = 16  # checks waiting for a thread; past it: 454 4.7.0 / 503 at once


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = ""  # default sqlite:///<state_dir>/relay.db
    pool_size: int = 4  # PostgreSQL connections per node (every node of every machine holds its own)


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    max_bytes: int = 0  # 0: no limit beyond the disk itself; else at least 2 x segment_bytes
    segment_bytes: int = 64 * MiB
    # Disk space preallocated for transitions (spool/RESERVE): given up when the disk fills, so the
    # outcome of a finished delivery can still be recorded; deliveries pause until it is back.
    reserve_bytes: int = 8 * MiB


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """This machine's relay processes (relay.cluster): each is a node with its own spool and scheduler."""

    # The machine's name among the nodes sharing the store; worker i is node "<name>-<i>", its spool
    # <state_dir>/spool/<name>-<i>. Default: the host name. Start a machine under a dead one's name
    # (with its state_dir/spool copied over) to adopt that machine's queue.
    name: str = ""
    workers: int = 0  # processes on this machine; 0: one per core (``atmos serve --workers N`` overrides)
    heartbeat: float = 1.0  # seconds between a node's heartbeats (the operator plane's view of it)
    lease_ttl: float = 10.0  # cluster-wide jobs move to another node this long after their holder died


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """atproto identity resolution and the OAuth sign-in client (DESIGN §3 web pages)."""

    plc_url: str = "https://plc.directory"  # DID PLC directory; tests point it at a local PLC
    handle_resolution: str = "standard"  # standard: DNS TXT _atproto.<handle> + https well-known | well-known-at
    handle_resolver_url: str = ""  # well-known-at: GET <this>/.well-known/atproto-did with Host: <handle> (tests)
    cache_ttl: float = 600.0  # resolved handles and DID documents
    timeout: float = 10.0  # per HTTP/DNS request during resolution and OAuth
    # Bounds on what strangers' servers can make the relay read or wait for (relay.net.fetch, issue 13):
    metadata_bytes: int = 64 * 1024  # OAuth metadata and endpoint answers, handle well-known files
    document_bytes: int = 256 * 1024  # DID documents, PDS records
    deadline: float = 30.0  # one whole sign-in step (resolve + discover + PAR; callback + token) or record read
    signins: int = 32  # sign-in steps in flight relay-wide (POST /enroll, /oauth/callback); more: 503
    signins_per_ip: int = 4  # ... and from one client IP; more: 429


@dataclass(frozen=True, slots=True)
class LabelerConfig:
    """The atproto labeler (relay.labeler, DESIGN §3)."""

    did: str = ""  # the labeler's DID; default did:web:<host of public_url>
    recheck_interval: float = 86400.0  # labels of every member re-checked daily
    pending: float = 300.0  # members whose check could not conclude (DNS/PDS error) retried this often
    # A subscribeRepos (wss://host/xrpc/com.atproto.sync.subscribeRepos) or Jetstream (wss://host/subscribe)
    # stream: attestation changes of members are acted on within seconds. Empty: the periodic check only.
    firehose_url: str = ""
    firehose_max_frame: int = 2 * MiB  # a bigger frame ends the connection (the stream is a stranger's)


@dataclass(frozen=True, slots=True)
class Config:
    operator_domain: str = "relay.localhost"
    public_url: str = ""
    state_dir: str = "state"
    dev: bool = True
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    suspension: SuspensionConfig = field(default_factory=SuspensionConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    testing: TestingConfig = field(default_factory=TestingConfig)
    # secrets: never from the file (see load_secrets)
    admin_token: str = field(default="", repr=False)
    secret_key: bytes = field(default=b"", repr=False)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def banner_host(self) -> str:
        return self.smtp.hostname or self.operator_domain

    def make_state_dir(self) -> Path:
        """Create the state dir 0700 (or tighten an existing one): it holds the store (bcrypt hashes,
        sealed keys, recipients), the spool (message bodies) and the generated secrets."""
        path = self.state_path
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
        return path

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.state_path / 'relay.db'}"


PRODUCTION_DEFAULTS: dict[str, Any] = {
    "smtp": {"submission_addr": "0.0.0.0:587", "submissions_addr": "0.0.0.0:465", "inbound_addr": "0.0.0.0:25"},
    "http": {"addr": "0.0.0.0:8080"},
}
_SECRET_KEYS = {"admin_token", "secret_key"}
# Keys that were replaced by the one test-only setting: say where they went.
_MOVED = {"delivery.allow_loopback_mx": "testing.allow_loopback_peers",
          "identity.allow_http_on_loopback": "testing.allow_loopback_peers"}


def load(path: str | Path | None, *, dev: bool, env: typing.Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (if any), apply defaults for dev or production, load secrets."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if not dev:
        raw = _merge(PRODUCTION_DEFAULTS, raw)
    for key in _SECRET_KEYS & raw.keys():
        raise ConfigError(f"{key}: secrets are not read from the config file; set ATMOS_{key.upper()}")
    cfg = _build(Config, raw, "")
    cfg = dataclasses.replace(cfg, dev=dev)
    if not cfg.public_url:
        cfg = dataclasses.replace(cfg, public_url=_default_public_url(cfg))
    _validate(cfg)
    return load_secrets(cfg, os.environ if env is None else env)


def load_secrets(cfg: Config, env: typing.Mapping[str, str]) -> Config:
    token = env.get("ATMOS_ADMIN_TOKEN", "")
    secret = env.get("ATMOS_SECRET_KEY", "")
    if cfg.dev:
        secrets_dir = cfg.state_path / "secrets"
        token = token or _generated(secrets_dir / "admin_token")
        secret = secret or _generated(secrets_dir / "secret_key")
    for name, value in (("ATMOS_ADMIN_TOKEN", token), ("ATMOS_SECRET_KEY", secret)):
        if len(value) < 16:
            raise ConfigError(f"{name}: must be set in the environment (at least 16 characters)")
    return dataclasses.replace(cfg, admin_token=token, secret_key=secret.encode())


def _generated(path: Path) -> str:
    """Read a dev secret, creating it 0600 on first use (O_EXCL: two processes never race)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def _default_public_url(cfg: Config) -> str:
    host = cfg.http.addr.host
    if host in ("0.0.0.0", "::", ""):
        return f"https://{cfg.operator_domain}"
    return f"http://{Addr(host, cfg.http.addr.port)}"


def _validate(cfg: Config) -> None:
    if not cfg.dev and not (cfg.tls.cert_file and cfg.tls.key_file):
        raise ConfigError("tls.cert_file: production needs tls.cert_file and tls.key_file (or run --dev)")
    if bool(cfg.tls.cert_file) != bool(cfg.tls.key_file):
        raise ConfigError("tls.key_file: tls.cert_file and tls.key_file go together")
    for key, value in (("limits.message_size", cfg.limits.message_size),
                       ("limits.json_body", cfg.limits.json_body),
                       ("limits.attachment_bytes", cfg.limits.attachment_bytes),
                       ("limits.recipients_per_message", cfg.limits.recipients_per_message)):
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
    if cfg.delivery.tls not in ("", "may", "verify", "none", "dane"):
        raise ConfigError(f"delivery.tls: expected may, verify, none or dane, got {cfg.delivery.tls!r}")
    if cfg.delivery.tls == "dane" and not cfg.delivery.dnssec:
        raise ConfigError("delivery.tls: dane needs delivery.dnssec = true (a local validating resolver)")
    if cfg.delivery.dnssec:
        # Lazy: the config is the bottom layer every module imports; the DANE rule lives with DANE.
        from relay.delivery.dane import dnssec_nameservers_problem

        problem = dnssec_nameservers_problem(cfg.delivery.nameservers)
        if problem is not None:
            raise ConfigError(f"delivery.dnssec: {problem}")
    sts_limits: tuple[tuple[str, float], ...] = (
        ("delivery.mta_sts_timeout", cfg.delivery.mta_sts_timeout),
        ("delivery.mta_sts_max_bytes", cfg.delivery.mta_sts_max_bytes),
        ("delivery.mta_sts_cache_entries", cfg.delivery.mta_sts_cache_entries))
    for sts_key, limit in sts_limits:
        if limit <= 0:
            raise ConfigError(f"{sts_key}: must be positive, got {limit}")
    if not cfg.delivery.retry_schedule or any(d <= 0 for d in cfg.delivery.retry_schedule):
        raise ConfigError("delivery.retry_schedule: a non-empty list of positive seconds")
    positive: list[tuple[str, float]] = [
        (f"{section}.{f.name}", getattr(getattr(cfg, section), f.name))
        for section, names in _POSITIVE.items() for f in dataclasses.fields(getattr(cfg, section)) if f.name in names
    ]
    for name, number in positive:
        if number <= 0:
            raise ConfigError(f"{name}: must be positive, got {number}")
    for key, value in (("smtp.junk_command_limit", cfg.smtp.junk_command_limit),
                       ("auth.bcrypt_queue", cfg.auth.bcrypt_queue)):
        if value < 0:
            raise ConfigError(f"{key}: must not be negative, got {value}")
    if cfg.delivery.initial_concurrency > cfg.delivery.per_destination:
        raise ConfigError("delivery.initial_concurrency: must not exceed delivery.per_destination")
    if cfg.identity.handle_resolution not in ("standard", "well-known-at"):
        raise ConfigError("identity.handle_resolution: expected standard or well-known-at, "
                          f"got {cfg.identity.handle_resolution!r}")
    if cfg.identity.handle_resolution == "well-known-at" and not cfg.identity.handle_resolver_url:
        raise ConfigError("identity.handle_resolver_url: required when identity.handle_resolution = well-known-at")
    _validate_spool(cfg.spool)
    _validate_node(cfg.node)
    if not 1 <= cfg.store.pool_size <= 64:
        raise ConfigError(f"store.pool_size: 1 to 64, got {cfg.store.pool_size}")
    if cfg.suspension.min_complaints < 1:
        raise ConfigError(f"suspension.min_complaints: must be at least 1, got {cfg.suspension.min_complaints}")
    for i, source in enumerate(cfg.inbound.fbl_sources):
        if not fbl_source_ok(source):
            raise ConfigError(f"inbound.fbl_sources[{i}]: {source!r} is neither a domain nor a network (a.b.c.d/n)")
    if not cfg.store_url.startswith(("sqlite:///", "postgresql://")):
        raise ConfigError(f"store.url: expected sqlite:///path or postgresql://..., got {cfg.store_url!r}")


def fbl_source_ok(source: str) -> bool:
    """A network (``192.0.2.0/24``, ``2001:db8::/32``, a bare address) or a domain name."""
    try:
        ipaddress.ip_network(source, strict=False)
        return True
    except ValueError:
        pass
    labels = source.rstrip(".").lower().split(".")
    return len(labels) >= 2 and all(
        label and len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels)


_POSITIVE = {
    "delivery": {"max_concurrency", "per_destination", "initial_concurrency", "per_host", "slow_concurrency",
                 "min_timeout"},
    "smtp": {"max_connections", "max_connections_per_ip", "pre_auth_timeout", "pre_auth_time", "pre_mail_timeout",
             "pre_mail_time", "session_time", "error_limit", "data_buffer_bytes"},
    "inbound": {"report_size", "report_parse_bytes", "report_parts", "parse_threads", "forward_daily",
                "forward_per_ip_per_hour", "srs_daily", "forward_confirm_daily", "forward_confirm_ttl"},
    "limits": {"header_size"},
    "dns": {"pending_claim_ttl"},
    "auth": {"per_ip_per_minute", "per_ip_burst", "per_ip_concurrency", "per_did_per_minute", "per_did_burst",
             "bcrypt_threads"},
}


def _validate_node(node: NodeConfig) -> None:
    if node.name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", node.name):
        raise ConfigError(f"node.name: letters, digits, '.', '_' and '-' (at most 63), got {node.name!r}")
    if not 0 <= node.workers <= 256:
        raise ConfigError(f"node.workers: 0 (one per core) to 256, got {node.workers}")
    if node.heartbeat <= 0 or node.lease_ttl < 3 * node.heartbeat:
        raise ConfigError(f"node.lease_ttl ({node.lease_ttl}) must be at least three node.heartbeat "
                          f"({node.heartbeat}) intervals")


def _validate_spool(spool: SpoolConfig) -> None:
    if spool.segment_bytes < 64 * 1024:
        raise ConfigError(f"spool.segment_bytes: at least 65536, got {spool.segment_bytes}")
    if spool.max_bytes < 0 or spool.reserve_bytes < 0:
        raise ConfigError("spool.max_bytes, spool.reserve_bytes: must not be negative")
    if spool.max_bytes and spool.max_bytes < 2 * spool.segment_bytes:
        # The active segment plus one being drained must fit, or the spool refuses mail for good.
        raise ConfigError(f"spool.max_bytes ({spool.max_bytes}) must be 0 or at least twice "
                          f"spool.segment_bytes ({spool.segment_bytes})")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type[Any], raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _SECRET_KEYS and f.name != "dev"}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        name = prefix + key
        if name in _MOVED:
            raise ConfigError(f"{name}: replaced by {_MOVED[name]} (test suites only)")
        if key not in fields:
            raise ConfigError(f"{name}: unknown key (known: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and hint is not Addr:
        return _build(hint, value, key + ".")
    if hint is Addr:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected \"host:port\" string")
        return Addr.parse(value, key)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected an array")
        args = typing.get_args(hint)
        inner = args[0]
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{key}: unsupported type")  # not used by Config
    types_by_hint: dict[Any, type | tuple[type, ...]] = {str: str, int: int, float: (int, float), bool: bool}
    expected = types_by_hint[hint]
    if isinstance(value, bool) and hint is not bool:
        raise ConfigError(f"{key}: expected {hint.__name__}, got a boolean")
    if not isinstance(value, expected):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return float(typing.cast(float, value)) if hint is float else value
