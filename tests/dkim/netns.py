"""Run programs that only know the system resolver against a test Knot server (DESIGN §8).

OpenDKIM's ``opendkim-testmsg`` (libopendkim over the libc resolver) and dkimpy's ``dkimverify``
script (dnspython's default resolver) look DKIM keys up through ``/etc/resolv.conf``, which names
servers by address only: port 53, no way to give another. The test Knot runs on a free port of the
shared loopback. So each run here happens in fresh namespaces made by ``unshare --net --mount``:

* a private network namespace: its own loopback, down until we bring it up, where nothing else
  listens, so port 53 of 127.0.0.1 is free by construction and a second ``KnotServer`` with the
  same zones binds it;
* a private mount namespace (util-linux ``unshare`` makes its mounts private), where a resolv.conf
  naming only 127.0.0.1 is bind-mounted over ``/etc/resolv.conf``.

The programs then run inside, reading their stdin from files. Nothing outside changes: the host's
resolv.conf and loopback are untouched, and everything goes when the child exits. Needs root
(CAP_SYS_ADMIN for the namespaces); ``require_netns`` skips, or fails under CI=true, without it.

    results = run_in_netns(tmp_path, zones, {"ok": Job(["opendkim-testmsg"], signed_bytes)})
    results["ok"].returncode, results["ok"].stdout, results["ok"].stderr
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.peers.require import missing, require

ROOT = Path(__file__).resolve().parents[2]
_JOB_TIMEOUT = 15
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


@dataclass(frozen=True)
class Job:
    argv: Sequence[str]
    stdin: bytes


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def require_netns() -> str:
    """The unshare program, once a private net+mount namespace is known to work here."""
    unshare = require("unshare", package="util-linux")
    probe = subprocess.run([unshare, "--net", "--mount", "--", "true"], capture_output=True, timeout=10, check=False)
    if probe.returncode != 0:
        missing(f"cannot make a private network namespace (needs root): {probe.stderr.decode(errors='replace')}")
    return unshare


def run_in_netns(base: Path, zones: Mapping[str, Sequence[str]], jobs: Mapping[str, Job], *,
                 job_timeout: float = _JOB_TIMEOUT) -> dict[str, Result]:
    """Start Knot with ``zones`` on 127.0.0.1:53 in a private namespace, run each job there (in
    order) with that server as the only resolver, and return what each one did."""
    unshare = require_netns()
    base.mkdir(parents=True, exist_ok=True)
    spec = {"base": str(base), "zones": {z: list(r) for z, r in zones.items()}, "jobs": {}, "timeout": job_timeout}
    for i, (name, job) in enumerate(jobs.items()):
        stdin = base / f"job{i}.stdin"
        stdin.write_bytes(job.stdin)
        spec["jobs"][name] = {"argv": list(job.argv), "stdin": str(stdin)}  # type: ignore[index]
    spec_path = base / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [unshare, "--net", "--mount", "--", sys.executable, "-m", "tests.dkim.netns", str(spec_path)],
        cwd=ROOT, env=env, capture_output=True, timeout=45 + job_timeout * len(jobs), check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"netns helper failed ({done.returncode}):\n{done.stdout.decode()}\n{done.stderr.decode()}")
    results = json.loads((base / "results.json").read_text())
    return {name: Result(**r) for name, r in results.items()}


# ---- inside the namespaces (python -m tests.dkim.netns SPEC) ----


def _loopback_up() -> None:
    """``ip link set lo up`` without iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS on a socket (netdevice(7))."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _inside(spec_path: Path) -> None:
    import tests.peers.knot as knot_module

    spec = json.loads(spec_path.read_text())
    base = Path(spec["base"])
    _loopback_up()
    resolv = base / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
    subprocess.run([require("mount"), "--bind", str(resolv), "/etc/resolv.conf"], check=True)
    # Port 53 of this namespace's own loopback: free, ours alone. (knot.py binds what free_port returns.)
    knot_module.free_port = lambda *, udp=False: 53  # type: ignore[attr-defined]
    results: dict[str, dict[str, object]] = {}
    with knot_module.KnotServer(base / "knot", spec["zones"]):
        for name, job in spec["jobs"].items():
            with open(job["stdin"], "rb") as stdin:
                done = subprocess.run(job["argv"], stdin=stdin, capture_output=True, timeout=spec["timeout"],
                                      check=False)
            results[name] = {
                "returncode": done.returncode,
                "stdout": done.stdout.decode(errors="replace"),
                "stderr": done.stderr.decode(errors="replace"),
            }
    (base / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    _inside(Path(sys.argv[1]))
