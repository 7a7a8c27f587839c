"""Bounces and complaints are parsed in worker threads with caps (relay.inbound.reports), and a
transaction to a VERP or FBL address has the smaller size limit inbound.report_size."""

from __future__ import annotations

import threading

import pytest
import trio

import relay.inbound.reports
from relay.inbound.reports import ReportReader
from tests.inbound.conftest import DID, OPERATOR, Rig, RigFactory
from tests.inbound.test_arf import arf_report, reported_message
from tests.inbound.test_dsn_inbound import dsn_for

FBL = f"fbl@{OPERATOR}"


def many_parts(parts: int, size: int = 0) -> bytes:
    """A multipart/report of ``parts`` tiny parts (the issue's 10 MiB / ~300k parts shape), padded."""
    head = (b"From: fbl@isp.example\r\nTo: " + FBL.encode() + b"\r\nSubject: report\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n")
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" * parts
    data = head + body
    while len(data) < size:
        data += b"z" * 998 + b"\r\n"
    return data + b"--b--\r\n"


def test_head_refuses_a_tree_of_too_many_parts_and_caps_the_bytes() -> None:
    reader = ReportReader(max_bytes=10_000, max_parts=8)
    assert reader.head(many_parts(8)) is not None
    assert reader.head(many_parts(200)) is None
    assert len(reader.head(b"x" * 50_000) or b"") == 10_000


@pytest.mark.trio
async def test_parsing_runs_off_the_event_loop(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a report is parsed, another SMTP session is served: the parser waits (in its thread)
    until that session has been answered, which could never happen if it ran on the Trio thread."""
    served = threading.Event()
    threads: list[int] = []
    real = relay.inbound.reports.parse_arf

    def slow_parse(data: bytes) -> object:
        threads.append(threading.get_ident())
        assert served.wait(20), "the event loop did not serve another session during the parse"
        return real(data)

    monkeypatch.setattr(relay.inbound.reports, "parse_arf", slow_parse)
    await rig.add_sent(20_001, "carol@isp.example")
    report = arf_report(reported_message(DID, return_path=rig.verp(20_001)))

    async def other_session() -> None:
        with trio.fail_after(20):
            while not threads:  # noqa: ASYNC110 (wait until the parse has begun)
                await trio.sleep(0.01)
            code, _ = await rig.rcpt(f"postmaster@{OPERATOR}")
            assert code == 250
            served.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_session)
        code, _ = await rig.send("", [FBL], report)
    assert code == 250 and served.is_set()
    assert threads and threading.main_thread().ident not in threads
    assert [c[0] for c in rig.events.complaints] == [DID]


@pytest.mark.trio
async def test_report_addresses_have_a_smaller_size_limit(rig_factory: RigFactory) -> None:
    rig = await rig_factory(report_size=50_000, message_size=1_000_000)
    await rig.add_sent(20_011, "gone@remote.example")
    big = dsn_for(rig, 20_011, "gone@remote.example", "5.1.1", "550 5.1.1 user unknown") + b"p" * 60_000 + b"\r\n"
    code, text = await rig.send("", [rig.verp(20_011)], big)
    assert (code, text[:5]) == (552, "5.3.4")
    code, text = await rig.send("someone@isp.example", [FBL], many_parts(10, 60_000))
    assert (code, text[:5]) == (552, "5.3.4")
    assert rig.events.bounces == [] and rig.events.complaints == []
    # Other operator addresses keep inbound.message_size; so does the next transaction.
    code, _ = await rig.send("someone@isp.example", [f"postmaster@{OPERATOR}"], many_parts(10, 60_000))
    assert code == 250
    small = dsn_for(rig, 20_011, "gone@remote.example", "5.1.1", "550 5.1.1 user unknown")
    code, _ = await rig.send("", [rig.verp(20_011)], small)
    assert code == 250 and len(rig.events.bounces) == 1


@pytest.mark.trio
async def test_a_report_of_too_many_parts_is_not_parsed(rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    calls: list[int] = []
    real = relay.inbound.reports.analyze

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(relay.inbound.reports, "analyze", spy)
    rig = await rig_factory(report_parts=16)
    await rig.add_sent(20_021, "gone@remote.example")
    code, _ = await rig.send("", [rig.verp(20_021)], many_parts(5_000))
    assert code == 250 and calls == [] and rig.events.bounces == []
    code, _ = await rig.send("someone@isp.example", [FBL], many_parts(5_000))
    assert code == 250 and rig.events.complaints == []
