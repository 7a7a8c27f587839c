"""``atmos admin doctor`` against real DNS (Knot) and a real HTTPS policy server: a correct operator set-up
passes every check; a broken one gets each problem named with its fix; the CLI exits 1 on problems."""

from __future__ import annotations

import datetime
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from relay.config import Config, DnsConfig, SmtpConfig, TestingConfig, TlsConfig
from relay.dns.checks import DnsLookup
from relay.mail.operatorkey import OperatorKeys
from relay.operator.doctor import diagnose
from tests.peers.httpd import QuietHandler, serving
from tests.peers.knot import KnotServer, knot_fixture  # noqa: F401

DOMAIN = "relay.test"
IP = "192.0.2.10"  # documentation address: only its DNS records are looked at, nothing is sent to it
SECRET = b"s" * 32


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def policy_server(ca: trustme.CA) -> Iterator[int]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.send_body(b"version: STSv1\r\nmode: enforce\r\nmx: relay.test\r\nmax_age: 604800\r\n", "text/plain")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(f"mta-sts.{DOMAIN}").configure_cert(ctx)
    with serving(Handler, tls=ctx) as port:
        yield port


def _cert(ca: trustme.CA, tmp: Path, name: str, days: int) -> Path:
    cert = ca.issue_cert(name, not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days))
    path = tmp / f"{name}-{days}.pem"
    cert.cert_chain_pems[0].write_to_path(str(path))
    return path


def _config(state: Path, ns: tuple[str, ...], cert: Path | None) -> Config:
    tls = TlsConfig(str(cert), str(cert)) if cert else TlsConfig()
    return Config(operator_domain=DOMAIN, state_dir=str(state), secret_key=SECRET, smtp=SmtpConfig(hostname=DOMAIN),
                  dns=DnsConfig(relay_ips=(IP,), nameservers=ns), tls=tls,
                  testing=TestingConfig(allow_loopback_peers=True))  # the policy server is on loopback


def _good_zone(dkim_name: str, dkim_value: str) -> dict[str, list[str]]:
    return {
        DOMAIN: [
            "@ A 192.0.2.10", "@ MX 10 relay.test.", '@ TXT "v=spf1 ip4:192.0.2.10 -all"',
            f'_dmarc TXT "v=DMARC1; p=reject; adkim=r; aspf=r; rua=mailto:postmaster@{DOMAIN}"',
            f"{dkim_name} TXT {dkim_value}", "mta-sts A 127.0.0.1", '_mta-sts TXT "v=STSv1; id=1"',
            '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tls-reports@relay.test"',
        ],
        "2.0.192.in-addr.arpa": ["10 PTR relay.test."],
    }


def _dkim(state: Path) -> tuple[str, str]:
    record = OperatorKeys(state, SECRET).current().record(DOMAIN)
    name = record["name"].removesuffix("." + DOMAIN)
    return name, " ".join(f'"{s}"' for s in record["strings"])


@pytest.mark.trio
async def test_a_correct_setup_passes_every_check(knot, ca: trustme.CA, policy_server: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dkim_name, dkim_value = _dkim(tmp_path)
    server: KnotServer = knot(_good_zone(dkim_name, dkim_value))
    cfg = _config(tmp_path, server.nameservers, _cert(ca, tmp_path, DOMAIN, 90))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    report = await diagnose(cfg, lookup=DnsLookup(server.nameservers, lifetime=3), https_context=client,
                            https_port=policy_server)
    statuses = {c.name: c.status for c in report.checks}
    assert statuses == {
        f"ptr {IP}": "ok", f"fcrdns {IP}": "ok", "spf": "ok", "dmarc": "ok", f"dkim {dkim_name.split('.')[0]}": "ok",
        "mx": "ok", "mta-sts": "ok", "tls-rpt": "ok", "certificate": "ok",
    }, report.text()
    assert report.ok
    assert "mode enforce" in next(c for c in report.checks if c.name == "mta-sts").found


@pytest.mark.trio
async def test_a_broken_setup_names_each_problem_and_its_fix(knot, ca: trustme.CA, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _dkim(tmp_path)
    server: KnotServer = knot({
        DOMAIN: ["@ A 192.0.2.99", '@ TXT "v=spf1 ip4:192.0.2.99 ~all"'],
        "2.0.192.in-addr.arpa": ["10 PTR mail.relay.test."],
    })
    cfg = _config(tmp_path, server.nameservers, _cert(ca, tmp_path, DOMAIN, 5))
    report = await diagnose(cfg, lookup=DnsLookup(server.nameservers, lifetime=3))
    checks = {c.name: c for c in report.checks}
    assert not report.ok
    assert checks[f"ptr {IP}"].status == "warning" and "HELO name relay.test" in checks[f"ptr {IP}"].fix
    assert checks[f"fcrdns {IP}"].status == "wrong"
    assert "mail.relay.test -> 192.0.2.10" in checks[f"fcrdns {IP}"].fix
    assert checks["spf"].status == "wrong"
    assert checks["dmarc"].status == "missing"
    assert checks["mx"].status == "missing" and "MX 10 relay.test" in checks["mx"].fix
    assert next(c for n, c in checks.items() if n.startswith("dkim ")).status == "missing"
    assert checks["mta-sts"].status == "warning" and "_mta-sts.relay.test" in checks["mta-sts"].fix
    assert checks["tls-rpt"].status == "warning"
    assert checks["certificate"].status == "warning" and "expires in" in checks["certificate"].fix


@pytest.mark.trio
async def test_certificate_for_another_name_and_no_ptr(knot, ca: trustme.CA, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: KnotServer = knot({DOMAIN: ["@ MX 10 relay.test."]})
    cfg = _config(tmp_path, server.nameservers, _cert(ca, tmp_path, "other.test", 90))
    report = await diagnose(cfg, lookup=DnsLookup(server.nameservers, lifetime=3))
    checks = {c.name: c for c in report.checks}
    assert checks["certificate"].status == "wrong" and "does not name the HELO host" in checks["certificate"].fix
    # The reverse zone is not served at all: Knot refuses, which is a DNS error, not a verdict.
    assert checks[f"ptr {IP}"].status in ("error", "missing")


def test_cli_json_and_exit_status(knot, ca: trustme.CA, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: KnotServer = knot({DOMAIN: ["@ MX 10 relay.test."]})
    cert = ca.issue_cert(DOMAIN)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    config = tmp_path / "atmos.toml"
    config.write_text(f'operator_domain = "{DOMAIN}"\nstate_dir = "{tmp_path / "state"}"\n'
                      f'[tls]\ncert_file = "{cert_file}"\nkey_file = "{key_file}"\n'
                      f'[dns]\nrelay_ips = ["{IP}"]\nnameservers = ["{server.nameservers[0]}"]\n')
    env = {**os.environ, "ATMOS_SECRET_KEY": "k" * 44, "ATMOS_ADMIN_TOKEN": "t" * 32}
    res = subprocess.run([sys.executable, "-m", "relay", "admin", "--config", str(config), "doctor",
                          "--json"], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert out["domain"] == DOMAIN and out["ok"] is False
    names = {c["name"]: c for c in out["checks"]}
    assert names["mx"]["status"] == "ok"
    assert names["spf"]["status"] == "missing" and "v=spf1 ip4:192.0.2.10 -all" in names["spf"]["fix"]
    text = subprocess.run([sys.executable, "-m", "relay", "admin", "--config", str(config), "doctor"],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert text.returncode == 1 and "[FAIL] spf" in text.stdout and "fix: " in text.stdout
