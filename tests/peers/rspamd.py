"""A real receiving spam filter for tests: Rspamd, scanning messages inside a private network namespace.

Rspamd's stock configuration fetches maps from the internet and asks public fuzzy servers. So it runs
only inside the namespaces of tests/dkim/netns.py (own loopback, no route anywhere: nothing can leave
the machine by construction), where Knot answers every DNS query on 127.0.0.1:53. Its own config dir
(``LOCAL_CONFDIR``), run, db and log dirs live in a temporary directory; the system service is never used.

    results = scan(tmp_path, zones, [Scan(message_bytes, ip="192.0.2.10", helo="relay.test",
                                          mail_from="bounce@relay.test", rcpt="a@example.org")])
    results[0]["score"], results[0]["symbols"]        # Rspamd's /checkv2 answer

Skips (or fails under CI=true) without the Debian ``rspamd`` package or without namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.dkim.netns import Job, run_in_netns
from tests.peers.require import require

_PORT = 11333  # inside the private namespace: nobody else is there
_READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Scan:
    message: bytes
    ip: str
    helo: str
    mail_from: str
    rcpt: str
    hostname: str = ""  # the client's reverse DNS name, as an MTA would pass it


def scan(base: Path, zones: Mapping[str, Sequence[str]], scans: Sequence[Scan]) -> list[dict[str, Any]]:
    """Start Knot (``zones``) and Rspamd in a private namespace, scan each message, return each answer."""
    rspamd = require("rspamd")
    base.mkdir(parents=True, exist_ok=True)
    spec = base / "rspamd-spec.json"
    items = []
    for i, s in enumerate(scans):
        path = base / f"msg{i}.eml"
        path.write_bytes(s.message)
        items.append({**{k: v for k, v in asdict(s).items() if k != "message"}, "file": str(path)})
    spec.write_text(json.dumps({"base": str(base / "rspamd"), "rspamd": rspamd, "scans": items}))
    job = Job([sys.executable, "-m", "tests.peers.rspamd", str(spec)], b"")
    result = run_in_netns(base / "netns", zones, {"scan": job}, job_timeout=120)["scan"]
    if result.returncode != 0:
        raise RuntimeError(f"rspamd scan failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    answers: list[dict[str, Any]] = json.loads(result.stdout)
    return answers


# ---- inside the namespaces (python -m tests.peers.rspamd SPEC) -------------------------------------


def _write_config(base: Path) -> Path:
    local = base / "conf"
    for sub in ("local.d", "override.d"):
        (local / sub).mkdir(parents=True, exist_ok=True)
    files = {
        "override.d/worker-normal.inc": f'bind_socket = "127.0.0.1:{_PORT}";\ncount = 1;\n',
        "override.d/worker-controller.inc": 'bind_socket = "127.0.0.1:11334";\ncount = 1;\n',
        "override.d/worker-proxy.inc": "enabled = false;\n",
        "override.d/worker-fuzzy.inc": "enabled = false;\n",
        "override.d/logging.inc": f'type = "file";\nfilename = "{base}/rspamd.log";\nlevel = "info";\n',
        # Knot on this namespace's loopback is the only DNS; no hyperscan compile (slow, and not needed).
        "local.d/options.inc": (
            'dns {\n  nameserver = ["127.0.0.1:53"];\n  timeout = 1s;\n  retransmits = 1;\n}\n'
            "disable_hyperscan = true;\nlocal_addrs = [];\n"
        ),
        "local.d/fuzzy_check.conf": "enabled = false;\n",
        "local.d/redis.conf": "",
    }
    for name, text in files.items():
        (local / name).write_text(text)
    return local


def _inside(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    base = Path(spec["base"])
    for sub in ("run", "db", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    local = _write_config(base)
    argv = [
        spec["rspamd"],
        "-f",
        "-i",
        "-u",
        "root",
        "-g",
        "root",
        "-c",
        "/etc/rspamd/rspamd.conf",
        f"--var=LOCAL_CONFDIR={local}",
        f"--var=RUNDIR={base / 'run'}",
        f"--var=DBDIR={base / 'db'}",
        f"--var=LOGDIR={base / 'log'}",
    ]
    with (base / "stdout.log").open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    try:
        _wait_ready(proc, base)
        answers = [_check(item) for item in spec["scans"]]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    print(json.dumps(answers))


def _wait_ready(proc: subprocess.Popen[bytes], base: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"rspamd exited with {proc.returncode}: {_log(base)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{_PORT}/ping", timeout=1) as resp:
                if resp.read().strip() == b"pong":
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"rspamd did not answer within {_READY_TIMEOUT} s: {_log(base)}")


def _log(base: Path) -> str:
    texts = []
    for name in ("rspamd.log", "stdout.log"):
        try:
            texts.append((base / name).read_text(errors="replace")[-3000:])
        except OSError:
            pass
    return "\n".join(texts)


def _check(item: dict[str, str]) -> dict[str, Any]:
    headers = {"IP": item["ip"], "Helo": item["helo"], "From": item["mail_from"], "Rcpt": item["rcpt"], "Pass": "all"}
    if item.get("hostname"):
        headers["Hostname"] = item["hostname"]
    data = Path(item["file"]).read_bytes()
    request = urllib.request.Request(f"http://127.0.0.1:{_PORT}/checkv2", data=data, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
    return answer


if __name__ == "__main__":
    _inside(Path(sys.argv[1]))
