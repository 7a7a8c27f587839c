"""/docs and its guides, rendered by the real relay from its running config, and every code sample in them
executed against that relay (issue 18): curl, swaks, openssl, Python, the PDS's PDS_EMAIL_* lines (sent with
the nodemailer 6.x a PDS uses) and the Postfix smarthost lines (a private Postfix relaying through us)."""

from __future__ import annotations

import html
import os
import re
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import DID, DOMAIN, HANDLE, Member
from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.e2e.test_clients import delivered, nodemailer, rfc5322, sink  # noqa: F401
from tests.peers.postfix import BouncingPostfix
from tests.peers.require import require
from tests.peers.smtpsink import SmtpSink

SAMPLE = re.compile(r'<pre class="sample" data-run="([a-z-]+)"><code>(.*?)</code></pre>', re.DOTALL)
GUIDES = ["api", "smtp", "dns", "warming", "forwarding", "bounces", "labels", "troubleshooting"]


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles,
          sink: SmtpSink) -> Iterator[RelayProcess]:  # noqa: F811
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=tls_files, smtp_toml='hostname = "localhost"\n',
                        extra_toml=f'[delivery]\nrelayhost = "[127.0.0.1]:{sink.port}"\n')
    proc.write_config()
    # The public SMTP name the docs show: one the test certificate covers and that resolves to loopback.
    info = proc.enroll(DID, DOMAIN, HANDLE)
    proc.member = Member(DID, DOMAIN, HANDLE, info["api_key"])  # type: ignore[attr-defined]
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


@pytest.fixture(scope="module")
def pages(relay: RelayProcess) -> dict[str, str]:
    out = {}
    for guide in ["", *GUIDES]:
        r = httpx.get(f"{relay.http}/docs" + (f"/{guide}" if guide else ""), timeout=10)
        assert r.status_code == 200, (guide, r.text[:300])
        out[guide or "index"] = r.text
    assert httpx.get(f"{relay.http}/docs/nope", timeout=10).status_code == 404
    return out


def test_guides_show_the_running_config(relay: RelayProcess, pages: dict[str, str]) -> None:
    smtp = pages["smtp"]
    assert f"Port {relay.submission[1]}" in smtp and f"Port {relay.submissions[1]}" in smtp
    assert f"localhost:{relay.submissions[1]}" in smtp and "PDS_EMAIL_SMTP_URL=smtps://" in smtp
    assert smtp.index("smtp://$ATMOS_DOMAIN") < smtp.index("smtps://$ATMOS_DOMAIN")  # 587 first, then 465
    for name, text in pages.items():
        assert relay.http in text or name in ("dns", "warming", "smtp"), name
        assert not re.search(r"127\.0\.0\.1:0\b|localhost:0\b|Port 0\b", text), name
    api = pages["api"]
    for code in ("INVALID_REQUEST", "RATE_LIMITED", "PAYLOAD_TOO_LARGE", "IDEMPOTENCY_KEY_REUSED"):
        assert f"<code>{code}</code>" in api
    for field in ("from", "to", "cc", "bcc", "replyTo", "attachments", "tags", "metadata", "category", "headers"):
        assert f"<code>{field}</code>" in api, field
    # relayproc lifts warming and caps to 1000000: the table shows the configured figures, not built-in ones
    assert "<td>warm</td><td>1000000</td><td>1000000</td>" in pages["warming"] and "from day" not in pages["warming"]
    assert "_atmos-challenge" in pages["dns"]


def samples(pages: dict[str, str]) -> list[tuple[str, str, str]]:
    return [(name, kind, html.unescape(code)) for name, text in pages.items() for kind, code in SAMPLE.findall(text)]


def test_every_sample_runs(relay: RelayProcess, member: Member, pages: dict[str, str], sink: SmtpSink,  # noqa: F811
                           tls_files: TLSFiles, tmp_path: Path) -> None:
    found = samples(pages)
    kinds = {kind for _, kind, _ in found}
    assert kinds == {"sh", "python", "pds-env", "postfix"} and len(found) >= 15
    env = {**os.environ, "ATMOS_DID": member.did, "ATMOS_DOMAIN": member.domain, "ATMOS_KEY": member.key,
           "SSL_CERT_FILE": str(tls_files.ca_pem), "CURL_CA_BUNDLE": str(tls_files.ca_pem)}
    require("swaks")
    for page, kind, code in found:
        where = f"{page}: {code[:80]!r}"
        if kind == "sh":
            res = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, f"{where}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        elif kind == "python":
            res = subprocess.run(["python3", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 timeout=60)
            assert res.returncode == 0, f"{where}\n{res.stderr[-2000:]}"
        elif kind == "pds-env":
            settings = dict(line.split("=", 1) for line in code.strip().splitlines())
            url = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], settings["PDS_EMAIL_SMTP_URL"])
            sender = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], settings["PDS_EMAIL_FROM_ADDRESS"])
            subject = f"docs-pds-{url.split(':')[0]}"
            out = nodemailer("nodemailer6", url, tls_files.ca_pem, {"from": sender, "to": "pds-user@example.org",
                                                                    "subject": subject, "text": "reset"})
            assert out["ok"], f"{where}\n{out}"
            delivered(sink, subject)
        else:
            run_postfix_sample(code, member, sink, tls_files)
    # The samples really sent mail: the one-look curl and the Python one among them.
    delivered(sink, "Hi")
    delivered(sink, "Python test")
    delivered(sink, "swaks test")


def run_postfix_sample(code: str, member: Member, mta: SmtpSink, tls_files: TLSFiles) -> None:
    lines = [line for line in code.splitlines() if line.strip() and not line.startswith("#")]
    (passwd_line,) = [line.split(":", 1)[1].strip() for line in code.splitlines() if "sasl_passwd:" in line]
    postfix = BouncingPostfix({}, hostname="docs-postfix.test")
    try:
        passwd = postfix.base / "sasl_passwd"
        passwd.write_text(passwd_line.replace("your-domain.example", member.domain)
                          .replace("atmos_your-api-key", member.key) + "\n")
        main = "\n".join(lines).replace("/etc/postfix/sasl_passwd", str(passwd))
        # localhost is the relay's public name here; this Postfix resolves names with the system resolver.
        postfix.extra_main = main + "\nsmtp_tls_CAfile = " + str(tls_files.ca_pem) + "\n"
        postfix.start()
        try:
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as s:
                s.sendmail(f"app@{member.domain}", ["pfdocs@example.org"],
                           rfc5322(f"app@{member.domain}", "pfdocs@example.org", "docs-postfix"))
            delivered(mta, "docs-postfix")
        except (AssertionError, OSError, smtplib.SMTPException):
            print(postfix.maillog())
            raise
    finally:
        postfix.stop()

