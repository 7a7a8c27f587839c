"""Postfix's ``smtp-sink`` as the destination of both relays, optionally dumping each message to a file.

With ``dump=True`` every mail transaction becomes one file under ``dump_dir`` (``smtp-sink -d DIR/%M.``),
closed when the final dot arrives: the file count is the number of messages received so far, and a file's
mtime is the time the sink received that message (nanosecond timestamps on this kernel). Messages stamped
by the generator carry ``X-Bench-Seq: <n>`` (see ``smtpgen``), which ties each arrival to its submission.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.ports import free_port, wait_for_banner
from tests.peers.process import terminate

from .common import tool

SEQ_HEADER = b"X-Bench-Seq:"
_SEQ_RE = re.compile(rb"^X-Bench-Seq: *(\d+)\r?$", re.MULTILINE)
_HEAD_BYTES = 16384  # the stamp is the submitted message's first header; only sink and relay headers precede it


@dataclass
class Arrivals:
    """What a dumping sink received: stamped messages by sequence number, plus everything else."""

    at: dict[int, float] = field(default_factory=dict)  # seq -> arrival (wall clock, seconds)
    copies: int = 0  # stamped messages received more than once (a duplicate delivery)
    unstamped: int = 0  # probes, DSNs, anything without X-Bench-Seq


class SmtpSink:
    """One ``smtp-sink`` process on a free loopback port (``start``/``stop``; ``count``/``arrivals`` when dumping)."""

    def __init__(self, base: Path, *, dump: bool) -> None:
        self.base = base
        self.dump = dump
        self.dump_dir = base / "dump"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._seen: dict[str, int] = {}  # file name -> seq of the stamped files already read

    def start(self) -> SmtpSink:
        self.base.mkdir(parents=True, exist_ok=True)
        cmd = [tool("smtp-sink"), "-u", "nobody"]
        if self.dump:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            pw = pwd.getpwnam("nobody")
            if os.geteuid() == 0:
                os.chown(self.dump_dir, pw.pw_uid, pw.pw_gid)  # smtp-sink writes as nobody
            cmd += ["-d", f"{self.dump_dir}/%M."]
        self.port = free_port()
        cmd += [f"127.0.0.1:{self.port}", "1000"]
        with open(self.base / "smtp-sink.log", "wb") as errlog:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=errlog, stdin=subprocess.DEVNULL, start_new_session=True
            )
        try:
            wait_for_banner(self.port, 10, alive=self.alive)
        except TimeoutError:
            self.stop()
            raise
        return self

    @property
    def relayhost(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def count(self) -> int:
        """Messages received so far (dump files; one per mail transaction)."""
        try:
            with os.scandir(self.dump_dir) as it:
                return sum(1 for e in it if e.is_file())
        except OSError:
            return 0

    def arrivals(self) -> Arrivals:
        """Read every dump file once (new ones on each call): seq -> arrival time from the file's mtime."""
        out = Arrivals()
        try:
            entries = list(os.scandir(self.dump_dir))
        except OSError:
            return out
        for entry in entries:
            if not entry.is_file():
                continue
            seq = self._seen.get(entry.name)
            if seq is None:
                try:
                    with open(entry.path, "rb") as fh:
                        head = fh.read(_HEAD_BYTES)
                except OSError:
                    continue
                m = _SEQ_RE.search(head)
                if m is None:  # unstamped, or still being written: read again next time
                    out.unstamped += 1
                    continue
                seq = self._seen[entry.name] = int(m.group(1))
            try:
                mtime = entry.stat().st_mtime_ns / 1e9
            except OSError:
                continue
            if seq in out.at:
                out.copies += 1
                out.at[seq] = min(out.at[seq], mtime)
            else:
                out.at[seq] = mtime
        return out

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        terminate(proc)
