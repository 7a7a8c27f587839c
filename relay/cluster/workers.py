"""``atmos serve --workers N``: N nodes on one machine, one parent that keeps them running.

The parent does only what must happen once, then supervises:

1. the first-start set-up (migrations, the dev TLS certificate, keys, the demo member) and the
   registration of the N node names in order (``<node.name>-1`` .. ``-N``), so no two nodes race
   to create a key and worker i keeps its number across restarts;
2. binds every listening socket once (relay.app.listeners) and hands them to each node process
   (``pass_fds``; the descriptors' numbers in ``ATMOS_NODE_SOCKETS``);
3. starts the nodes (``python -m relay`` with the same arguments, ``ATMOS_NODE`` naming the node,
   ``ATMOS_NODE_READY`` a pipe on which the node writes its Bound JSON once it serves), waits until
   all are ready, then prints the URLs and ``ATMOS_READY`` once and writes state/run.json;
4. restarts a node that exits (after 1 s, doubling to 30 s while it keeps dying within a minute of its
   start): its spool is recovered by the new process like any restart's, and the other nodes kept
   serving the same sockets meanwhile;
5. on SIGTERM/SIGINT sends SIGTERM to every node (each drains as a single relay does: listeners
   first, then in-flight sessions and deliveries get their grace), waits, then exits 0. Nodes are
   told to get SIGTERM if the parent itself dies (``PR_SET_PDEATHSIG``), so none is orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.app.listeners import ENV as SOCKETS_ENV
from relay.app.listeners import Sockets
from relay.app.startup import announce_ready, as_running, dev_capture, prepare_state
from relay.cluster.identity import machine_name, worker_name
from relay.config import Config
from relay.store import open_store

log = logging.getLogger("relay.cluster")

NODE_ENV = "ATMOS_NODE"
READY_ENV = "ATMOS_NODE_READY"
START_TIMEOUT = 120.0
_BACKOFF_FIRST, _BACKOFF_MAX, _STABLE = 1.0, 30.0, 60.0
_PR_SET_PDEATHSIG = 1


def default_workers(cfg: Config) -> int:
    """``node.workers``, else one per core (a dev relay: one)."""
    if cfg.node.workers:
        return cfg.node.workers
    return 1 if cfg.dev else max(1, len(os.sched_getaffinity(0)))


@dataclass
class _Worker:
    name: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = _BACKOFF_FIRST
    restart_at: float | None = None
    ready_fd: int = -1  # the read end of the node's ready pipe, until it wrote its line (or exited)
    bound: dict[str, Any] = field(default_factory=dict)


class WorkerSupervisor:
    def __init__(self, cfg: Config, workers: int, argv: Sequence[str]) -> None:
        self.cfg = cfg
        self.argv = [sys.executable, "-m", "relay", *argv]
        machine = machine_name(cfg.node.name)
        self.workers = [_Worker(worker_name(machine, i)) for i in range(1, workers + 1)]
        self.stopping = False
        self.sockets: Sockets | None = None

    # -- start --------------------------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.cfg.make_state_dir()
        store = open_store(self.cfg.store_url)  # migrates, before any node opens it
        try:
            for w in self.workers:
                store.register_node(w.name, os.uname().nodename, os.getpid())
            self.sockets = Sockets.bind(self.cfg, capture=dev_capture(self.cfg))
            bound = self.sockets.bound(self.cfg.dev, "")
            cfg = as_running(self.cfg, bound)
            demo = prepare_state(cfg, store).demo
        finally:
            store.close()
        for w in self.workers:
            self._spawn(w)
        if not self._wait_ready():
            self._stop_all()
            return 1
        bound = dataclasses.replace(bound, nodes=tuple(w.name for w in self.workers))
        run_file = cfg.state_path / "run.json"
        run_file.write_text(bound.as_json())
        announce_ready(cfg, bound, demo)
        try:
            self._supervise()
        finally:
            self._stop_all()
            run_file.unlink(missing_ok=True)
            self.sockets.close()
        log.info("stopped")
        return 0

    def _spawn(self, w: _Worker) -> None:
        assert self.sockets is not None
        read_fd, write_fd = os.pipe()
        env = {**os.environ, SOCKETS_ENV: self.sockets.to_env(), NODE_ENV: w.name, READY_ENV: str(write_fd)}
        w.proc = subprocess.Popen(self.argv, env=env, pass_fds=[*self.sockets.fds(), write_fd],
                                  stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        os.close(write_fd)
        w.started, w.restart_at, w.bound = time.monotonic(), None, {}
        w.ready_fd = read_fd
        log.info("node %s started (pid %d)", w.name, w.proc.pid)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        waiting = {w.ready_fd: w for w in self.workers}
        buffers: dict[int, bytes] = {fd: b"" for fd in waiting}
        while waiting and not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"atmos serve: nodes {', '.join(w.name for w in waiting.values())} not ready within "
                      f"{START_TIMEOUT:.0f} s", file=sys.stderr)
                return False
            try:
                ready, _, _ = select.select(list(waiting), [], [], min(left, 0.5))
            except InterruptedError:
                continue
            for fd in ready:
                chunk = os.read(fd, 65536)
                buffers[fd] += chunk
                if not chunk or buffers[fd].endswith(b"\n"):
                    w = waiting.pop(fd)
                    os.close(fd)
                    w.ready_fd = -1
                    if not chunk and not buffers[fd]:
                        print(f"atmos serve: node {w.name} exited before it was ready", file=sys.stderr)
                        return False
                    w.bound = json.loads(buffers[fd])
        return not self.stopping

    # -- run ----------------------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    code = w.proc.returncode
                    w.proc = None
                    if now - w.started > _STABLE:
                        w.backoff = _BACKOFF_FIRST
                    w.restart_at = now + w.backoff
                    log.error("node %s exited (%s); restarting it in %.0f s", w.name, _exit_text(code), w.backoff)
                    w.backoff = min(w.backoff * 2, _BACKOFF_MAX)
                elif w.proc is None and w.restart_at is not None and now >= w.restart_at:
                    self._spawn(w)  # the others serve meanwhile; its ready line is read below
            pending = {w.ready_fd: w for w in self.workers if w.ready_fd >= 0}
            try:
                ready, _, _ = select.select(list(pending), [], [], 0.1)
            except InterruptedError:
                continue
            for fd in ready:
                w = pending[fd]
                if os.read(fd, 65536):
                    log.info("node %s is serving again", w.name)
                os.close(fd)
                w.ready_fd = -1

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("received %s: stopping every node", signal.Signals(signum).name)
        self.stopping = True

    def _stop_all(self) -> None:
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        grace = self.cfg.smtp.shutdown_grace + self.cfg.delivery.shutdown_grace + 30
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("node pid %d did not stop within %.0f s; killing it", proc.pid, grace)
                proc.kill()
                proc.wait()


def _exit_text(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux prctl), so no node is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def serve_workers(cfg: Config, workers: int, argv: Sequence[str]) -> int:
    return WorkerSupervisor(cfg, workers, argv).run()


__all__ = ["NODE_ENV", "READY_ENV", "WorkerSupervisor", "default_workers", "serve_workers"]
