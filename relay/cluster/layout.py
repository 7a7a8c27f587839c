"""Where a node keeps its spool: ``<state_dir>/spool/<node name>``, and the one-time move from before nodes.

A relay from before nodes kept one spool directly in ``<state_dir>/spool``. Its queue ids start at 1,
node 1's range, and its store mark is node 1's: so when node 1 starts and finds that layout, the old
spool's files move into node 1's directory (renames within one directory tree: atomic each, and the
directory is fsynced), before anything opens them. Any other node leaves them alone.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from relay.cluster.identity import NodeIdentity
from spool.segment import fsync_dir, make_dirs

log = logging.getLogger("relay.cluster")

# What a spool directory holds (spool.log, spool.segment, spool.recovery, spool.record).
_SPOOL_ENTRY = re.compile(r"seg-\d+\.log|LOCK|RESERVE|record\.key|quarantine")


def adopt_legacy_spool(state: Path, node: NodeIdentity) -> int:
    """Move a pre-node spool in ``state/spool`` into node 1's directory; the number of entries moved."""
    root = state / "spool"
    if node.number != 1 or not root.is_dir():
        return 0
    entries = [e for e in os.listdir(root) if _SPOOL_ENTRY.fullmatch(e) and e != node.name]
    if not entries:
        return 0
    target = node.spool_dir(state)
    make_dirs(target)
    for entry in entries:
        os.rename(root / entry, target / entry)
    fsync_dir(target)  # the new names first: a crash between leaves the files in one place or the other
    fsync_dir(root)
    log.info("spool: moved the single-process spool (%d entries) into node %s's directory %s",
             len(entries), node.name, target)
    return len(entries)


__all__ = ["adopt_legacy_spool"]
