"""``atmos admin``: the operator CLI for scripted set-ups (DESIGN §3).

It opens the same store (SQLite WAL: safe beside a running server) and reads the
spool read-only, so it can run while ``atmos serve`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
import urllib.error
import urllib.request
from typing import Any

from relay.address import is_did, is_domain, normalize_domain
from relay.cluster.status import JOBS_LEASE, node_view
from relay.config import Addr, Config
from relay.dns.checks import DnsLookup
from relay.dns.verifier import UnknownDomain, check_once, expected_records
from relay.mail.dkimkeys import SecretBox, SecretBoxError, new_domain_keys, public_records
from relay.mail.operatorkey import OperatorKeys
from relay.members.enrolment import enroll_domain, issue_api_key
from relay.operator.doctor import diagnose
from relay.store import open_store
from relay.store.base import DomainLimitReached, DomainTaken, Store


class AdminError(Exception):
    """A refused admin command; the message says what to fix."""


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """``common`` (--config, --dev) goes to every parser here, so options are accepted in any position."""

    def parser(group: Any, name: str, **kwargs: Any) -> Any:
        return group.add_parser(name, parents=[common], **kwargs)

    admin = sub.add_parser("admin", help="operator commands", parents=[common])
    asub = admin.add_subparsers(dest="admin_command", required=True)

    enroll = parser(asub, "enroll", help="enroll a member DID and a sending domain")
    enroll.add_argument("--did", required=True)
    enroll.add_argument("--domain", required=True)
    enroll.add_argument("--handle")
    enroll.add_argument("--skip-dns", action="store_true", help="mark the domain verified without DNS checks")
    enroll.add_argument("--new-key", action="store_true", help="issue a new API key even if one exists")
    enroll.add_argument("--json", action="store_true")

    members = parser(asub, "members", help="members")
    msub = members.add_subparsers(dest="members_command", required=True)
    mlist = parser(msub, "list")
    mlist.add_argument("--json", action="store_true")
    for name in ("suspend", "unsuspend"):
        p = parser(msub, name)
        p.add_argument("did")
        p.add_argument("--reason", default="operator decision")
        p.add_argument("--json", action="store_true")

    dkim = parser(asub, "dkim", help="the operator domain's DKIM key")
    dsub = dkim.add_subparsers(dest="dkim_command", required=True)
    for name, text in (("show", "the operator keys and the DNS records to publish"),
                       ("rotate", "new selector; the old key stays valid for a grace period")):
        p = parser(dsub, name, help=text)
        p.add_argument("--json", action="store_true")

    domain = parser(asub, "domain", help="sending domains")
    dosub = domain.add_subparsers(dest="domain_command", required=True)
    dcheck = parser(dosub, "check", help="check the domain's DNS records now and update its state")
    dcheck.add_argument("domain")
    dcheck.add_argument("--dry-run", action="store_true", help="report only; do not change the domain's state")
    dcheck.add_argument("--json", action="store_true")
    drelease = dosub.add_parser("release", help="drop a domain and every pending claim on it, so its real "
                                "owner can enroll it")
    drelease.add_argument("domain")
    drelease.add_argument("--json", action="store_true")

    reports = asub.add_parser("reports", help="complaints and bounces no member could be held to (newest first)")
    reports.add_argument("--limit", type=int, default=50)
    reports.add_argument("--json", action="store_true")

    doctor = parser(asub, "doctor", help="check the operator's own DNS, TLS-RPT/MTA-STS and certificate")
    doctor.add_argument("--json", action="store_true")

    nodes = parser(asub, "nodes", help="the relay's nodes: state, last heartbeat, queue depth, the jobs lease")
    nodes.add_argument("--json", action="store_true")

    queue = parser(asub, "queue", help="the spool")
    qsub = queue.add_subparsers(dest="queue_command", required=True)
    qlist = parser(qsub, "list")
    qlist.add_argument("--json", action="store_true")
    for name in ("show", "retry", "hold", "release", "delete"):
        p = parser(qsub, name, help=f"{name} a queued message (talks to the running relay)")
        p.add_argument("queue_id", type=int)
        p.add_argument("--url", help="the relay's HTTP base URL (default: from state/run.json)")
        p.add_argument("--json", action="store_true")


def run(cfg: Config, args: argparse.Namespace) -> int:
    if args.admin_command == "doctor":
        report = doctor_cmd(cfg)
        print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
        return 0 if report.ok else 1
    handlers = {"enroll": enroll, "members": members, "queue": queue, "dkim": dkim, "domain": domain_cmd,
                "reports": reports_cmd, "nodes": nodes_cmd}
    result = handlers[args.admin_command](cfg, args)
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    else:
        print(_human(result))
    return 0


def _store(cfg: Config) -> Store:
    cfg.make_state_dir()
    return open_store(cfg.store_url)


def enroll(cfg: Config, args: argparse.Namespace) -> dict[str, Any]:
    did, domain = args.did.strip(), normalize_domain(args.domain)
    if not is_did(did):
        raise AdminError(f"--did: {did!r} is not a did:plc or did:web identifier")
    if not is_domain(domain):
        raise AdminError(f"--domain: {args.domain!r} is not a valid domain name")
    keys = new_domain_keys(domain)
    store = _store(cfg)
    try:
        try:
            done = enroll_domain(store, cfg, did, domain, keys, vouched=args.skip_dns,
                                 handle=args.handle.lower().lstrip("@") if args.handle else None)
        except DomainLimitReached:
            raise AdminError(f"--domain: {did} already has the maximum of 2 sending domains") from None
        except DomainTaken:
            raise AdminError(f"--domain: {domain} is already enrolled by another member "
                             f"(atmos admin domain release {domain} first)") from None
        row = done.row
        api_key = issue_api_key(store, did) if args.new_key or store.get_api_key_hash(did) is None else None
        return {
            "did": did, "domain": domain, "state": row.state, "api_key": api_key,
            "records": [r.to_json() for r in expected_records(row, cfg, cfg.secret_key)],
            "api_key_note": None if api_key else "member already has an API key (use --new-key to replace it)",
            "dkim": keys.records() if done.fresh else _dkim_records(cfg, row.selector, domain, row),
            "challenge": {"name": f"_atmos-challenge.{domain}", "type": "TXT", "value": f"atmos-verify={done.token}"},
        }
    finally:
        store.close()


def _dkim_records(cfg: Config, selector: str, domain: str, row: Any) -> dict[str, Any]:

    box = SecretBox(cfg.secret_key)
    return public_records(domain, selector, box.decrypt(row.rsa_private), box.decrypt(row.ed25519_private))


def domain_cmd(cfg: Config, args: argparse.Namespace) -> Any:
    import trio


    name = normalize_domain(args.domain)
    if args.domain_command == "release":
        store = _store(cfg)
        try:
            held = [(d.did, d.state) for m in store.list_members() for d in store.domains_for(m.did)
                    if d.domain == name]
            if not store.release_domain(name):
                raise AdminError(f"{name} is not enrolled or claimed")
        finally:
            store.close()
        return {"domain": name, "released": [{"did": did, "state": state} for did, state in held]}
    try:
        report = trio.run(functools.partial(check_once, cfg, None, name, record_states=not args.dry_run))
    except UnknownDomain:
        raise AdminError(f"{name} is not enrolled") from None
    except SecretBoxError as exc:
        raise AdminError(f"cannot read the DKIM keys of {name}: {exc}") from None
    out: dict[str, Any] = report.to_json()
    return out


def reports_cmd(cfg: Config, args: argparse.Namespace) -> Any:
    """Unattributed ARF/DSN reports (relay.inbound): kept for the operator, never counted against anyone."""
    if not 0 < args.limit <= 10_000:
        raise AdminError(f"--limit: expected 1 to 10000, got {args.limit}")
    store = _store(cfg)
    try:
        return [dataclasses.asdict(r) for r in store.list_unattributed(args.limit)]
    finally:
        store.close()


def doctor_cmd(cfg: Config) -> Any:
    """The operator's set-up (relay/operator/doctor.py); exit status 1 when something must be fixed."""
    import trio


    return trio.run(functools.partial(diagnose, cfg, lookup=DnsLookup.from_config(cfg)))


def dkim(cfg: Config, args: argparse.Namespace) -> Any:
    keys = OperatorKeys(cfg.state_path, cfg.secret_key)
    if args.dkim_command == "rotate":
        new, _ = keys.rotate()
        current = new
    else:
        current = keys.current()
    return {"domain": cfg.operator_domain, "current": current.selector,
            "keys": [{"selector": k.selector, "created": k.created, **k.record(cfg.operator_domain)}
                     for k in keys.load()],
            "note": "publish every listed record; a retired key can be removed from DNS 7 days after rotation"}


def members(cfg: Config, args: argparse.Namespace) -> Any:
    store = _store(cfg)
    try:
        cmd = args.members_command
        if cmd in ("suspend", "unsuspend"):
            if store.get_member(args.did) is None:
                raise AdminError(f"no member {args.did}")
            if cmd == "suspend":
                store.set_member_status(args.did, "suspended", args.reason)
            else:
                store.set_member_status(args.did, "active", None)
        out = []
        for m in store.list_members():
            out.append({"did": m.did, "handle": m.handle, "status": m.status, "reason": m.suspension_reason,
                        "domains": [d.domain for d in store.domains_for(m.did)], "created_at": m.created_at})
        return out
    finally:
        store.close()


def nodes_cmd(cfg: Config, args: argparse.Namespace) -> Any:
    store = _store(cfg)
    try:
        return node_view(store.list_nodes(), store.lease_holder(JOBS_LEASE), time.time(), cfg.node.lease_ttl)
    finally:
        store.close()


def queue(cfg: Config, args: argparse.Namespace) -> Any:
    if args.queue_command == "show":
        return _relay_api(cfg, args.url, "GET", f"/admin/api/queue/{args.queue_id}")
    if args.queue_command != "list":
        return _relay_api(cfg, args.url, "POST", f"/admin/api/queue/{args.queue_id}/{args.queue_command}")
    from spool import SpoolLog

    root = cfg.state_path / "spool"
    # Every node of this machine has its own spool directory (relay.cluster.layout).
    spools = sorted(d for d in root.iterdir() if d.is_dir() and d.name != "quarantine") if root.is_dir() else []
    now = time.time()
    out = []
    for spool_dir, msg in ((d, m) for d in spools for m in SpoolLog.open_readonly(d).live()):
        out.append({
            "queue_id": msg.queue_id, "node": spool_dir.name, "did": msg.envelope.did, "from": msg.envelope.mail_from,
            "recipients": [{"id": rid, "address": rcpt, "state": msg.rcpt_state(rid)}
                           for rid, rcpt in zip(msg.rcpt_ids, msg.envelope.rcpts, strict=True)],
            "arrival": msg.envelope.arrival, "age_seconds": round(now - msg.envelope.arrival, 1),
            "size": msg.length, "attrs": dict(msg.envelope.attrs),
        })
    return out


def base_url(cfg: Config) -> str:
    """The running relay's HTTP URL: what it wrote to state/run.json at start, else the config."""
    try:
        run = json.loads((cfg.state_path / "run.json").read_text())
        return str(run["http"][0])
    except (OSError, ValueError, KeyError, IndexError):
        host = cfg.http.addr.host
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"http://{Addr(host, cfg.http.addr.port)}"


def _relay_api(cfg: Config, url: str | None, method: str, path: str) -> Any:
    target = (url or base_url(cfg)).rstrip("/") + path
    req = urllib.request.Request(target, method=method, data=b"" if method == "POST" else None,
                                 headers={"Authorization": f"Bearer {cfg.admin_token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            detail = exc.reason
        raise AdminError(f"{method} {path}: {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AdminError(f"cannot reach the relay at {target}: {exc} (is `atmos serve` running?)") from None


def _human(result: Any) -> str:
    if isinstance(result, list):
        return "\n".join(json.dumps(item) for item in result) or "(none)"
    return json.dumps(result, indent=2)
