"""Per-source token buckets (pure), and the limit on the live listener."""

from __future__ import annotations

import smtplib

import pytest
import trio

from relay.net.ratelimit import TokenBuckets, source_key
from tests.inbound.conftest import OPERATOR, RigFactory


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_refill_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(30, 10, clock=clock)
    assert all(buckets.take("192.0.2.1") for _ in range(10))
    assert not buckets.take("192.0.2.1")
    assert buckets.retry_after("192.0.2.1") == pytest.approx(2.0)  # 30/min: one token every 2 s
    assert buckets.take("192.0.2.2")  # another source has its own bucket
    clock.t += 1.9
    assert not buckets.take("192.0.2.1")
    clock.t += 0.1
    assert buckets.take("192.0.2.1")
    clock.t += 3600
    assert sum(buckets.take("192.0.2.1") for _ in range(20)) == 10  # refills up to the burst only


def test_ipv6_sources_share_their_64() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    buckets = TokenBuckets(1, 2, clock=Clock())
    assert buckets.take("2001:db8::1") and buckets.take("2001:db8::2")
    assert not buckets.take("2001:db8::3")


def test_memory_is_bounded() -> None:
    clock = Clock()
    buckets = TokenBuckets(60, 1, clock=clock, max_sources=100)
    for i in range(1000):
        buckets.take(f"10.0.{i // 256}.{i % 256}")
        clock.t += 0.01
    assert len(buckets) <= 100


@pytest.mark.trio
async def test_listener_refuses_a_flood_from_one_address(rig_factory: RigFactory) -> None:
    rig = await rig_factory(per_ip_per_minute=1, per_ip_burst=3)

    def connect() -> tuple[int, bytes]:
        client = smtplib.SMTP(timeout=10)
        try:
            code, msg = client.connect(rig.host, rig.port)
            return code, msg if isinstance(msg, bytes) else msg.encode()
        except smtplib.SMTPConnectError as exc:
            err = exc.smtp_error
            return exc.smtp_code, err if isinstance(err, bytes) else err.encode()
        finally:
            client.close()

    answers = [await trio.to_thread.run_sync(connect) for _ in range(5)]
    assert [code for code, _ in answers] == [220, 220, 220, 421, 421]
    assert answers[3][1] == b"4.7.0 too many connections from your address, try later"
    assert rig.handler.refused_connections == 2


@pytest.mark.trio
async def test_transactions_on_one_connection_count_too(rig_factory: RigFactory) -> None:
    rig = await rig_factory(per_ip_per_minute=1, per_ip_burst=3)

    def many(client: smtplib.SMTP) -> list[int]:
        codes = []
        for _ in range(4):
            code, _ = client.docmd("MAIL", "FROM:<a@sender.example>")
            codes.append(code)
            client.docmd("RCPT", f"TO:<postmaster@{OPERATOR}>")
            client.rset()
        return codes

    # The connection takes the first token, transactions after the first one each.
    assert await rig.smtp(many) == [250, 250, 250, 451]
