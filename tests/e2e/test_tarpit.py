"""Five tarpitting MX domains cannot stall everyone's mail (issue 13): the real relay process, MX records
from a real Knot, a healthy recipient MTA (Postfix smtp-sink) and five tarpits (loopback listeners on
127.0.0.2-6 that take the message and never answer the final dot), with the default concurrency
settings the issue measured (max_concurrency 100, per_destination 20)."""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import DID, DOMAIN, HANDLE, Member, message
from tests.e2e.relayproc import RelayProcess, TLSFiles
from tests.peers.knot import KnotServer
from tests.peers.smtpsink import SmtpSink
from tests.peers.tarpit import Tarpit

TARPITS = 5


def zones() -> dict[str, list[str]]:
    out = {f"tarpit{i}.example": ["@ 300 MX 10 mx", f"mx 300 A 127.0.0.{2 + i}"] for i in range(TARPITS)}
    out["healthy.example"] = ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"]
    out[DOMAIN] = ["@ 300 MX 10 mx", "mx 300 A 127.0.0.1"]
    return out


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path_factory.mktemp("sink")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tarpits(sink: SmtpSink) -> Iterator[list[Tarpit]]:
    pits = [Tarpit(f"127.0.0.{2 + i}", sink.port).__enter__() for i in range(TARPITS)]  # delivery.port is shared
    yield pits
    for pit in pits:
        pit.close()


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with KnotServer(tmp_path_factory.mktemp("knot"), zones()) as server:
        yield server


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles, sink: SmtpSink, dns: KnotServer,
          tarpits: list[Tarpit]) -> Iterator[RelayProcess]:
    toml = (f"[delivery]\nport = {sink.port}\nnameservers = [\"{dns.nameservers[0]}\"]\n"
            "shutdown_grace = 2.0\n")
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=tls_files, extra_toml=toml)
    info = proc.enroll(DID, DOMAIN, HANDLE)
    proc.member = Member(DID, DOMAIN, HANDLE, info["api_key"])  # type: ignore[attr-defined]
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


def submit(relay: RelayProcess, member: Member, ctx: ssl.SSLContext, rcpts: list[str], subject: str) -> None:
    with smtplib.SMTP(*relay.submission, timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=ctx)
        s.ehlo("client.test")
        s.login(member.did, member.key)
        s.sendmail(f"hello@{member.domain}", rcpts, message(f"hello@{member.domain}", rcpts[0], subject=subject))


def test_a_healthy_domain_gets_its_mail_while_five_tarpits_hang(
    relay: RelayProcess, sink: SmtpSink, tarpits: list[Tarpit], client_ctx: ssl.SSLContext
) -> None:
    member: Member = relay.member  # type: ignore[attr-defined]
    for i in range(TARPITS):  # 5 x 40 recipients: enough to fill max_concurrency 100 at 20 per destination
        for batch in range(2):
            submit(relay, member, client_ctx, [f"r{batch}-{j}@tarpit{i}.example" for j in range(20)], f"pit-{i}")
    deadline = time.monotonic() + 60
    while sum(p.hanging for p in tarpits) < TARPITS:  # every tarpit holds connections now
        assert time.monotonic() < deadline, [p.hanging for p in tarpits]
        time.sleep(0.05)
    submit(relay, member, client_ctx, [f"h{j}@healthy.example" for j in range(10)], "healthy")
    deadline = time.monotonic() + 60  # the issue: 0 of 10 in 60 s
    while len([m for m in sink.messages() if b"Subject: healthy" in m.data]) < 10:
        assert time.monotonic() < deadline, "the healthy domain's mail did not get through"
        time.sleep(0.1)
    # Slow start: a destination nobody knows yet gets initial_concurrency (5) connections, not 20.
    assert all(p.hanging <= 5 for p in tarpits), [p.hanging for p in tarpits]
    assert relay.proc is not None and relay.proc.poll() is None
    assert httpx.get(f"{relay.http}/healthz", timeout=10).status_code == 200
