"""A real Bluesky PDS (``@atproto/pds``, tests/localpds) sending its own mail through the relay (issue 18).

The PDS operator follows our docs: ``PDS_EMAIL_SMTP_URL=smtp://<did>:<api key>@relay:587`` (nodemailer 6.x
inside the PDS splits the DID at its first colon), ``PDS_EMAIL_FROM_ADDRESS`` on the enrolled domain, and
that domain's default category set to ``transactional`` (a PDS cannot add ``X-Atmos-Category``). A password
reset and an email confirmation must arrive at the recipient MTA, DKIM-signed three times (member RSA,
member Ed25519, operator; each verified by dkimpy), and without a List-Unsubscribe header.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import dkim
import httpx
import pytest

from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.e2e.test_clients import delivered, parsed, sink  # noqa: F401  (the sink fixture)
from tests.localpds.fixture import LocalPds, start_pds
from tests.peers.smtpsink import SmtpSink

PDS_MEMBER = "did:plc:pdsoperatoraaaaaaaaaaaaa"
PDS_DOMAIN = "pds.example.com"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles,
          sink: SmtpSink) -> Iterator[RelayProcess]:  # noqa: F811
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=tls_files,
                        extra_toml=f'[delivery]\nrelayhost = "[127.0.0.1]:{sink.port}"\n')
    proc.write_config()
    proc.enrolled = proc.enroll(PDS_MEMBER, PDS_DOMAIN)  # type: ignore[attr-defined]
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


@pytest.fixture(scope="module")
def pds(relay: RelayProcess, tls_files: TLSFiles) -> Iterator[LocalPds]:
    key = relay.enrolled["api_key"]  # type: ignore[attr-defined]
    r = httpx.put(f"{relay.http}/member/category", json={"domain": PDS_DOMAIN, "category": "transactional"},
                  headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": PDS_MEMBER}, timeout=10)
    assert r.status_code == 200, r.text
    host, port = relay.submission
    with start_pds(tls_files.ca_pem, PDS_EMAIL_SMTP_URL=f"smtp://{PDS_MEMBER}:{key}@{host}:{port}",
                   PDS_EMAIL_FROM_ADDRESS=f"noreply@{PDS_DOMAIN}") as started:
        yield started


def dns_records(relay: RelayProcess) -> dict[bytes, bytes]:
    """The TXT records a member and the operator publish, answered without any DNS traffic."""
    member = relay.enrolled["dkim"]  # type: ignore[attr-defined]
    records = [member["rsa"], member["ed25519"], *relay.admin("dkim", "show")["keys"]]
    return {(r["name"].rstrip(".") + ".").encode(): r["value"].encode() for r in records}


def test_pds_password_reset_and_confirmation_arrive_signed_without_unsubscribe(
        relay: RelayProcess, pds: LocalPds, sink: SmtpSink) -> None:  # noqa: F811
    r = httpx.post(f"{pds.pds_url}/xrpc/com.atproto.server.requestPasswordReset",
                   json={"email": "alice@example.com"}, timeout=30)
    assert r.status_code == 200, r.text
    session = httpx.post(f"{pds.pds_url}/xrpc/com.atproto.server.createSession",
                         json={"identifier": pds.handle, "password": pds.password}, timeout=30).json()
    r = httpx.post(f"{pds.pds_url}/xrpc/com.atproto.server.requestEmailConfirmation",
                   headers={"Authorization": f"Bearer {session['accessJwt']}"}, timeout=30)
    assert r.status_code == 200, r.text
    txt = dns_records(relay)

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        return txt.get(name if name.endswith(b".") else name + b".")

    for subject in ("Password Reset Requested", "Email Confirmation"):
        (raw,) = delivered(sink, subject)
        msg = parsed(raw)
        assert raw.rcpts == ("alice@example.com",)
        assert msg["From"].addresses[0].addr_spec == f"noreply@{PDS_DOMAIN}"
        assert msg["List-Unsubscribe"] is None and msg["List-Unsubscribe-Post"] is None
        signatures = msg.get_all("DKIM-Signature") or []
        domains = sorted(re.search(r"\bd=([^;\s]+)", s).group(1) for s in signatures)  # type: ignore[union-attr]
        assert domains == [PDS_DOMAIN, PDS_DOMAIN, "relay.test"]
        wire = raw.data if b"\r\n" in raw.data else raw.data.replace(b"\n", b"\r\n")
        assert [bool(dkim.DKIM(wire).verify(idx=i, dnsfunc=lookup)) for i in range(3)] == [True, True, True]
