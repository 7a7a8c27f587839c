"""Postfix's ``smtp-sink`` as a real recipient MTA for tests, on 127.0.0.1 and a free port (DESIGN §8).

Each ``SmtpSink`` is its own ``smtp-sink`` process dumping every message into a temporary directory
(``-d``) and printing its counters (``-c``: ``sess=N quit=N mesg=N``, updated when a session ends, on
QUIT and on each final dot). What it offers: PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, DSN (no SIZE,
no SMTPUTF8, never STARTTLS); flags change that (``-p`` no PIPELINING, ``-8`` no 8BITMIME, ``-e`` no
ESMTP at all: EHLO gets a 5xx) or make it fail commands (``-r rcpt``: 450 to every RCPT, ``-f rcpt``:
500 to every RCPT, ``-q data``: hang up after DATA, ``-w delay``: wait before answering DATA).

    from tests.peers.smtpsink import smtp_sink_fixture  # noqa: F401  (registers the ``smtp_sink`` fixture)

    def test_something(smtp_sink):
        sink = smtp_sink()                  # or smtp_sink("-p", "-8") for flags
        ... deliver to sink.host, sink.port ...
        sink.messages()                     # [SinkMessage(mail_from, rcpts, helo, data), ...]
        sink.counters()                     # {"sess": 1, "quit": 1, "mesg": 2}

Skips (or fails under CI=true) when smtp-sink is missing: run scripts/install-test-peers (Debian
package ``postfix``).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from tests.peers.ports import free_port
from tests.peers.process import terminate
from tests.peers.require import require

_READY_TIMEOUT = 5.0
_COUNTERS = re.compile(r"sess=(\d+) quit=(\d+) mesg=(\d+)")
_HEADER = re.compile(rb"(X-[A-Za-z-]+): (.*)")


def require_smtp_sink() -> str:
    """The path of Postfix's smtp-sink; the test stops when it is not installed (tests/peers/require.py)."""
    return require("smtp-sink", package="postfix")


@dataclass(frozen=True)
class SinkMessage:
    mail_from: str  # the address, without <>
    mail_args: str  # the whole MAIL argument, e.g. "<a@b.example> BODY=8BITMIME"
    rcpts: tuple[str, ...]  # addresses, without <>
    helo: str
    data: bytes  # the message as received (smtp-sink's own headers and Received: removed)
    path: Path


class SmtpSink:
    """One smtp-sink on 127.0.0.1:<free port>; see the module docstring."""

    host = "127.0.0.1"

    def __init__(self, base: Path, *flags: str, hostname: str = "sink.test") -> None:
        self.program = require_smtp_sink()
        self.base = Path(base)
        self.flags = flags
        self.hostname = hostname
        self.dump_dir = self.base / "dump"
        self.out_path = self.base / "stdout"
        self.err_path = self.base / "stderr"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._baseline = {"sess": 0, "quit": 0, "mesg": 0}

    def start(self) -> SmtpSink:
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the free port may be taken between the probe and smtp-sink's bind
            self.port = free_port()
            # -u is required when running as root (it names the user to switch to), refused otherwise.
            user = ["-u", "root"] if os.geteuid() == 0 else []
            argv = [
                self.program, "-c", *user, "-h", self.hostname, "-t", "30",
                "-d", f"{self.dump_dir}/%M.", *self.flags, f"{self.host}:{self.port}", "100",
            ]  # fmt: skip
            with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
                self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self._kill()
        raise RuntimeError(f"smtp-sink did not start: {self.err_path.read_text(errors='replace')}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.01)
                continue
            # The probe was a session too: wait until it is counted, then count from there.
            while self._raw_counters()["sess"] < 1 and time.monotonic() < deadline:
                time.sleep(0.005)
            self._baseline = self._raw_counters()
            return True
        return False

    def stop(self) -> None:
        self._kill()

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        terminate(proc)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def counters(self) -> dict[str, int]:
        """smtp-sink's counters, the readiness probe left out: sessions ended, QUITs, messages."""
        raw = self._raw_counters()
        return {k: v - self._baseline[k] for k, v in raw.items()}

    def _raw_counters(self) -> dict[str, int]:
        found = _COUNTERS.findall(self.out_path.read_text(errors="replace"))
        sess, quit_, mesg = (int(v) for v in found[-1]) if found else (0, 0, 0)
        return {"sess": sess, "quit": quit_, "mesg": mesg}

    def wait_counters(self, timeout: float = 5.0, **expected: int) -> dict[str, int]:
        """Poll ``counters()`` until it includes ``expected`` (smtp-sink prints them asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            counters = self.counters()
            if all(counters.get(k) == v for k, v in expected.items()) or time.monotonic() > deadline:
                return counters
            time.sleep(0.01)

    def messages(self) -> list[SinkMessage]:
        """The dumped messages, by file time (messages within one clock tick may come in any order)."""
        files = sorted(self.dump_dir.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        return [_parse_dump(p) for p in files]


def _parse_dump(path: Path) -> SinkMessage:
    """smtp-sink's dump: X-* records, a three-line Received: header, the message, an empty line."""
    raw = path.read_bytes()
    mail_args, helo, rcpts = "", "", []
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and (m := _HEADER.match(lines[i])):
        value = m.group(2).decode("utf-8", "replace")
        if m.group(1) == b"X-Mail-Args":
            mail_args = value
        elif m.group(1) == b"X-Rcpt-Args":
            rcpts.append(_address(value))
        elif m.group(1) == b"X-Helo-Args":
            helo = value
        i += 1
    if i < len(lines) and lines[i].startswith(b"Received:"):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    body = b"\n".join(lines[i:])
    if body.endswith(b"\n\n"):
        body = body[:-1]  # the empty line smtp-sink appends after each message
    return SinkMessage(_address(mail_args), mail_args, tuple(rcpts), helo, body, path)


def _address(args: str) -> str:
    path = args.split(" ", 1)[0]
    return path[1:-1] if path.startswith("<") and path.endswith(">") else path


@pytest.fixture(name="smtp_sink")
def smtp_sink_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SmtpSink]]:
    """The ``smtp_sink`` fixture, a factory: ``smtp_sink(*flags, hostname="sink.test")`` starts an
    SmtpSink; all are stopped after the test. Skips (or fails under CI=true) when smtp-sink is missing.

    Use it with ``from tests.peers.smtpsink import smtp_sink_fixture  # noqa: F401``.
    """
    require_smtp_sink()
    sinks: list[SmtpSink] = []

    def start(*flags: str, hostname: str = "sink.test") -> SmtpSink:
        sink = SmtpSink(tmp_path_factory.mktemp("smtp-sink"), *flags, hostname=hostname)
        sinks.append(sink)
        return sink.start()

    yield start
    for sink in sinks:
        sink.stop()
