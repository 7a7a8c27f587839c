"""Small shared pieces: a self-signed cert, run results, process memory and CPU. Free ports and "is the
SMTP server up" are the test peers' (tests/peers/ports.py), as is the private Postfix."""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.require import find

BENCH_DOMAIN = "bench.example"
MAIL_FROM = f"a@{BENCH_DOMAIN}"
RCPT_TO = "x@example.org"
MESSAGE_BYTES = 2048

_T0 = time.monotonic()


def log(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the figures."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def tool(name: str) -> str:
    """A Postfix program's path (Debian installs them in /usr/sbin, which a non-root PATH may lack)."""
    return find(name) or f"/usr/sbin/{name}"


def make_cert(directory: Path) -> tuple[Path, Path]:
    """Self-signed ECDSA P-256 certificate, shared by the relay and Postfix so TLS costs the same."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("bench.localhost"),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_path, 0o644)  # Postfix daemons read it after dropping privileges (temp dir, bench only)
    return cert_path, key_path


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100 * len(sorted_values) + 0.4999))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class RunResult:
    """One load run: accepted/failed counts over the wall time of the load phase."""

    accepted: int = 0
    failed: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, MAIL FROM -> 250 after the dot
    errors: list[str] = field(default_factory=list)
    cpu: float | None = None  # server CPU seconds during the run (its whole process tree)
    # server CPU seconds from the start of the load until its queue was empty again: what accepting,
    # signing and delivering the run's messages cost (``cpu`` stops with the load, delivery does not)
    cpu_drained: float | None = None
    client_cpu: float | None = None  # load generator CPU seconds (all worker processes)
    window: float = 0.0  # seconds over which cpu/client_cpu/system_busy were taken (load + spawn)
    system_busy: float | None = None  # busy CPU seconds of the whole machine over ``window``
    skipped: str = ""  # reason, when the scenario could not run for this system
    marks: dict[int, tuple[float, float]] = field(default_factory=dict)  # stamped seq -> (MAIL FROM, 250) wall

    @property
    def rate(self) -> float:
        return self.accepted / self.wall if self.wall > 0 else 0.0

    def pct(self, q: float) -> float:
        return percentile(sorted(self.latencies), q)

    def _share(self, seconds: float | None) -> float | None:
        span = self.window or self.wall
        return None if seconds is None or span <= 0 else seconds / span

    @property
    def cpu_per_message(self) -> float | None:
        """Server CPU seconds per accepted message, accept to delivered (``cpu_drained``)."""
        if self.cpu_drained is None or self.accepted <= 0:
            return None
        return self.cpu_drained / self.accepted

    @property
    def cpu_share(self) -> float | None:
        """Server CPU use in cores (1.0 = one core busy) during the run."""
        return self._share(self.cpu)

    @property
    def client_share(self) -> float | None:
        return self._share(self.client_cpu)

    @property
    def other_share(self) -> float | None:
        """Everything else on the machine (other users' jobs: the figures are noisy when this is high)."""
        if self.system_busy is None:
            return None
        return self._share(max(0.0, self.system_busy - (self.cpu or 0.0) - (self.client_cpu or 0.0)))


def median_run(runs: list[RunResult]) -> RunResult:
    """The run with the median rate (its latencies and errors travel with it)."""
    good = [r for r in runs if not r.skipped]
    if not good:
        return runs[0] if runs else RunResult(skipped="not run")
    good.sort(key=lambda r: r.rate)
    return good[len(good) // 2]


# --- processes ---------------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _status_kib(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory_kib(pid: int) -> tuple[int, int, int]:
    """(processes, summed VmRSS, summed PSS) over ``pid`` and its descendants."""
    pids = process_tree(pid)
    return len(pids), sum(rss_kib(p) for p in pids), sum(pss_kib(p) for p in pids)


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its live descendants (plus reaped children's totals)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is state (field 3); utime/stime/cutime/cstime are fields 14-17
        total += sum(int(x) for x in fields[11:15])
    return total / tick


def system_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(x) for x in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    guest = sum(values[8:10]) if len(values) > 9 else 0  # guest time is already inside user/nice
    return (sum(values) - idle - guest) / os.sysconf("SC_CLK_TCK")
