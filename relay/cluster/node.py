"""The running node's place in the cluster: heartbeat, the jobs lease, commands left for it.

``Node.run`` (started before the listeners) every ``node.heartbeat`` seconds writes the node's
heartbeat with a small JSON snapshot of itself (what ``atmos admin nodes``, ``/metrics`` and the
console show of every node: no node ever calls another), and takes or renews the ``jobs`` lease.

Jobs that must run once per cluster (the DNS and label re-check loops, the firehose, retention, the
webhook outbox dispatcher) are started with ``while_leading``: they run while this node holds the lease
and are cancelled when it loses it. A node believes it holds the lease only until ``lease_ttl -
2 * heartbeat`` after its last successful renewal, while the store lets another node take it only after
the full ``lease_ttl``: between the two nobody runs the jobs, never two nodes at once (clocks of the
machines kept in step, as NTP does; the store compares each writer's own clock). A node that stops
releases the lease at once, so a restart does not leave the jobs idle for ``lease_ttl``.

``serve_commands`` runs what other nodes left in ``node_commands`` for this one (an operator's hold or
release of a message this node's spool holds), polling every ``COMMAND_POLL`` seconds: an indexed read
of nothing most of the time.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from relay.cluster.identity import NodeIdentity
from relay.cluster.status import JOBS_LEASE
from relay.config import NodeConfig
from relay.store.aio import AsyncStore
from relay.store.base import StoreError

log = logging.getLogger("relay.cluster")

COMMAND_POLL = 0.25
Job = Callable[[], Awaitable[None]]
Handler = Callable[[str, str], Awaitable[tuple[bool, str]]]  # (action, target) -> (ok, message)


async def register(store: AsyncStore, name: str) -> NodeIdentity:
    """This process as node ``name`` in the store's registry (a known name keeps its number)."""
    row = await store.register_node(name, socket.gethostname(), os.getpid())
    return NodeIdentity(row.name, row.number)


class Node:
    def __init__(self, store: AsyncStore, identity: NodeIdentity, cfg: NodeConfig,
                 snapshot: Callable[[], dict[str, Any]], *, clock: Callable[[], float] = time.time) -> None:
        self.store, self.identity, self.cfg = store, identity, cfg
        self._snapshot = snapshot
        self._clock = clock
        self._leading = trio.Event()  # set while this node holds the jobs lease
        self._held_until = 0.0
        self._lost: trio.CancelScope | None = None  # the running jobs, cancelled when the lease is lost

    @property
    def leading(self) -> bool:
        return self._leading.is_set() and self._clock() < self._held_until

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._beat()
        task_status.started()
        try:
            while True:
                await trio.sleep(self.cfg.heartbeat)
                await self._beat()
        finally:
            with trio.move_on_after(5, shield=True):
                await self._stop()

    async def _beat(self) -> None:
        try:
            await self.store.node_heartbeat(self.identity.number, json.dumps(self._snapshot(), separators=(",", ":")))
        except StoreError as exc:
            log.warning("node %s: heartbeat not written: %s", self.identity.name, exc)
        now = self._clock()
        try:
            expires = await self.store.take_lease(JOBS_LEASE, self.identity.name, self.cfg.lease_ttl)
        except StoreError as exc:
            log.warning("node %s: jobs lease not renewed: %s", self.identity.name, exc)
            expires = None if now >= self._held_until else -1.0  # keep it while the margin lasts
        if expires is not None and expires > 0:
            if not self._leading.is_set():
                log.info("node %s now runs the cluster's periodic jobs", self.identity.name)
                self._leading.set()
            self._held_until = now + self.cfg.lease_ttl - 2 * self.cfg.heartbeat
        elif expires is None and self._leading.is_set():
            log.warning("node %s lost the jobs lease; its periodic jobs stop", self.identity.name)
            self._drop()

    def _drop(self) -> None:
        self._leading = trio.Event()
        self._held_until = 0.0
        if self._lost is not None:
            self._lost.cancel()

    async def _stop(self) -> None:
        leading = self._leading.is_set()
        self._drop()
        try:
            if leading:
                await self.store.release_lease(JOBS_LEASE, self.identity.name)
            await self.store.node_heartbeat(self.identity.number, json.dumps(self._snapshot()), stopped=True)
        except StoreError as exc:
            log.warning("node %s: stop not recorded: %s", self.identity.name, exc)

    async def while_leading(self, *jobs: Job, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run ``jobs`` whenever this node holds the jobs lease; cancel them when it loses it."""
        task_status.started()
        while True:
            await self._leading.wait()
            async with trio.open_nursery() as nursery:
                self._lost = nursery.cancel_scope
                if not self._leading.is_set():  # lost between the wake-up and here
                    nursery.cancel_scope.cancel()
                for job in jobs:
                    nursery.start_soon(job)
            self._lost = None

    async def serve_commands(self, handler: Handler, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry out the commands other nodes left for this one, oldest first."""
        task_status.started()
        while True:
            try:
                pending = await self.store.pending_node_commands(self.identity.number)
            except StoreError as exc:
                log.warning("node %s: cannot read its commands: %s", self.identity.name, exc)
                pending = []
            for command in pending:
                try:
                    ok, message = await handler(command.action, command.target)
                except Exception as exc:  # the other node gets the error, this one keeps serving
                    log.exception("node command %s %s failed", command.action, command.target)
                    ok, message = False, f"{command.action} failed on node {self.identity.name}: {exc}"
                try:
                    await self.store.finish_node_command(command.id, ok, message)
                except StoreError as exc:
                    log.warning("node %s: command %d result not written: %s", self.identity.name, command.id, exc)
            await trio.sleep(COMMAND_POLL)


__all__ = ["COMMAND_POLL", "JOBS_LEASE", "Node", "register"]
