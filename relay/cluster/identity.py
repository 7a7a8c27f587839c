"""Who a node is: its name, its number, and the queue ids it owns (pure).

Names are chosen by the operator (``node.name``, default the host name; worker i of a machine is
``<name>-<i>``) and kept stable across restarts: a node's spool directory is named after it, so a
restarted node finds its queue again, and a machine started under a dead machine's name, with that
spool copied over, adopts its messages. Numbers are handed out by the store's registry the first time
a name is seen and never reused by another name.

Each number owns a range of ``2**ID_BITS`` queue ids (node 1: 1 .. 2**40, node 2: 2**40 + 1 ...), well
inside both backends' 64-bit integers and JavaScript's 2**53: the store's message rows of every node
live in one table, an operator action on a queue id is routed to the node that owns it, and node 1's
range starts at 1, so a relay from before nodes is node 1 with its ids unchanged.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

ID_BITS = 40
MAX_NODES = 8191  # (MAX_NODES << ID_BITS) < 2**53


def first_id(number: int) -> int:
    """The lowest queue id of node ``number``'s range."""
    if not 1 <= number <= MAX_NODES:
        raise ValueError(f"node number {number} out of range 1..{MAX_NODES}")
    return ((number - 1) << ID_BITS) + 1


def owner(queue_id: int) -> int:
    """The number of the node whose range holds ``queue_id``."""
    return ((queue_id - 1) >> ID_BITS) + 1


def machine_name(configured: str) -> str:
    """``node.name``, else this host's name cut to what a node name may hold."""
    if configured:
        return configured
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0])[:60].strip("-._")
    return name or "node"


def worker_name(machine: str, index: int) -> str:
    return f"{machine}-{index}"


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    name: str
    number: int

    @property
    def first_id(self) -> int:
        return first_id(self.number)

    def spool_dir(self, state: Path) -> Path:
        return state / "spool" / self.name

    def owns(self, queue_id: int) -> bool:
        return owner(queue_id) == self.number


__all__ = ["ID_BITS", "MAX_NODES", "NodeIdentity", "first_id", "machine_name", "owner", "worker_name"]
