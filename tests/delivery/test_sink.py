"""The dev capture sink: stores what it receives, answers configured recipients as told."""

from __future__ import annotations

import logging
import smtplib
from pathlib import Path

import pytest
import trio

from relay.delivery.sink import REPLIES, CaptureSink, read_captured
from relay.smtp.client import ClientTimeouts, TlsPolicy, open_smtp
from relay.smtp.reply import Reply

FAST = ClientTimeouts(connect=2, greeting=2, helo=2, mail=2, rcpt=2, data_init=2, data_block=2, data_final=2)


@pytest.mark.trio
async def test_capture_with_smtplib(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A client that is not ours: the stdlib's smtplib, in a thread."""
    sink = CaptureSink(tmp_path / "captured", hostname="sink.test")
    caplog.set_level(logging.INFO, logger="relay.delivery.sink")
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(sink.serve)
        assert (host, port) == sink.address and port != 0

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP(host, port, local_hostname="client.test", timeout=5) as smtp:
                assert not smtp.has_extn("auth")  # AUTH is off on the sink
                data = b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"
                return smtp.sendmail("from@a.test", ["to@b.test", "reject-x@b.test", "cc@b.test"], data)

        refused = await trio.to_thread.run_sync(send)
        await sink.shutdown()
    assert refused == {"reject-x@b.test": (550, b"5.1.1 user unknown (capture sink)")}
    [message] = sink.messages()
    assert message.mail_from == "from@a.test"
    assert message.rcpts == ("to@b.test", "cc@b.test")
    assert message.data == b"Subject: hi\r\n\r\n.dot\r\nbody\r\n"
    raw = message.path.read_bytes()
    assert raw.startswith(b"X-Captured-Mail-From: <from@a.test>\r\nX-Captured-Rcpt-To: <to@b.test>\r\n")
    assert message.path.suffix == ".eml" and not list(message.path.parent.glob("*.tmp"))
    assert read_captured(message.path) == message
    assert sink.connections == 1 and sink.received == 1
    logged = [r.getMessage() for r in caplog.records]
    assert any(message.path.name in line and "to=<to@b.test>,<cc@b.test>" in line for line in logged)


@pytest.mark.trio
async def test_configured_replies_and_null_sender(tmp_path: Path) -> None:
    replies = {"Slow": Reply(452, "4.2.2", "mailbox full"), "gone": Reply(550, "5.1.1", "gone")}
    sink = CaptureSink(tmp_path, replies=replies)
    assert sink.reply_for("slow-1@x.test") == replies["Slow"]  # prefixes are case-insensitive
    assert sink.reply_for("temp-fail@x.test") is None  # replaces the defaults
    assert CaptureSink(tmp_path).reply_for("TEMP-FAIL-7@x.test") == REPLIES["temp-fail"]
    assert CaptureSink(tmp_path, replies={}).reply_for("reject@x.test") is None
    async with trio.open_nursery() as nursery:
        host, port = await nursery.start(sink.serve)
        client = await open_smtp(host, port, helo_name="relay.test", tls=TlsPolicy.NONE, timeouts=FAST)
        async with client:
            result = await client.send_message("", ["slow@x.test", "gone@x.test", "ok@x.test"], b"Subject: x\r\n\r\n")
            second = await client.send_message("a@relay.test", ["ok2@x.test"], b"Subject: y\r\n\r\n")
        await sink.shutdown()
    assert {r: rep.code for r, rep in result.replies().items()} == {
        "slow@x.test": 452,
        "gone@x.test": 550,
        "ok@x.test": 250,
    }
    assert second.replies()["ok2@x.test"].code == 250
    first, last = sink.messages()
    assert (first.mail_from, first.rcpts) == ("", ("ok@x.test",))
    assert (last.mail_from, last.rcpts) == ("a@relay.test", ("ok2@x.test",))
    assert sink.connections == 1 and sink.received == 2


def test_messages_of_an_empty_or_missing_directory(tmp_path: Path) -> None:
    assert CaptureSink(tmp_path / "missing").messages() == []
    assert CaptureSink(tmp_path).messages() == []


@pytest.mark.trio
async def test_shutdown_before_serve_is_harmless(tmp_path: Path) -> None:
    sink = CaptureSink(tmp_path)
    await sink.shutdown()
    assert sink.address is None
