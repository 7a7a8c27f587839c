"""An operator action for a message another node holds: left in the store for its owner.

Only the node whose spool holds a message may change it (its spool is its own; DESIGN §4). An admin
API call that reaches another node (a load balancer picks any) writes the action to
``node_commands`` for the owner (relay.cluster.identity.owner) and waits for the answer the owner's
``Node.serve_commands`` writes back, polling the store. The owner must be alive (a heartbeat within
``live_within`` seconds): asking a dead node is refused at once with its name, never a long hang.
Results travel as JSON text: ``{"changed": n}`` or ``{"error": "...", "unknown": true|false}``.
"""

from __future__ import annotations

import time

import trio

from relay.store.aio import AsyncStore

FORWARD_TIMEOUT = 10.0
_POLL = 0.05


class NodeUnavailable(Exception):
    """The owning node is unknown, stopped, silent, or did not answer in time."""


async def forward(store: AsyncStore, number: int, action: str, target: str, *, live_within: float,
                  wait: float = FORWARD_TIMEOUT) -> tuple[bool, str]:
    """Have node ``number`` carry out ``action`` on ``target``: its (ok, result)."""
    node = next((n for n in await store.list_nodes() if n.number == number), None)
    if node is None:
        raise NodeUnavailable(f"no node numbered {number} has ever run (the id belongs to its range)")
    silent = time.time() - node.heartbeat_at
    if node.stopped_at is not None or silent > live_within:
        raise NodeUnavailable(f"node {node.name}, which holds this message, is not running (last heartbeat "
                              f"{silent:.0f} s ago); its queue can be changed once it runs again")
    command_id = await store.add_node_command(number, action, target)
    with trio.move_on_after(wait):
        while True:
            command = await store.get_node_command(command_id)
            if command is not None and command.done_at is not None:
                return bool(command.ok), command.result or ""
            await trio.sleep(_POLL)
    raise NodeUnavailable(f"node {node.name}, which holds this message, did not answer within {wait:.0f} s")


__all__ = ["FORWARD_TIMEOUT", "NodeUnavailable", "forward"]
