"""Segment files: names, listing, creation.

A segment is ``seg-<seq, 20 digits>.log``. ``seq`` is the id counter's value when the segment was
created (at least one more than the previous segment's), so the newest segment's name is a
high-water mark of the id counter that survives even when every record has been compacted away.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_NAME = re.compile(r"^seg-(\d{20})\.log$")


def name(seq: int) -> str:
    return f"seg-{seq:020d}.log"


def listing(directory: Path) -> list[int]:
    """Sequence numbers of the segments in ``directory``, oldest first."""
    seqs = []
    for entry in os.listdir(directory):
        m = _NAME.match(entry)
        if m:
            seqs.append(int(m.group(1)))
    return sorted(seqs)


def fsync_dir(directory: Path) -> None:
    """Make a create/rename/unlink in ``directory`` durable (POSIX only promises it after this)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create(directory: Path, seq: int) -> int:
    """Create an empty segment, make its name durable, return a read-write fd."""
    fd = os.open(directory / name(seq), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents, each made durable in its own parent.

    ``mkdir(parents=True)`` alone leaves the new names in the page cache: a crash soon after the
    first start could lose the state dir with the spool (and its acknowledged mail) inside it.
    """
    directory = Path(directory)
    missing: list[Path] = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for path in reversed(missing):  # outermost first, so each parent is durable before its child
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass  # created meanwhile by someone else; still make its name durable
        fsync_dir(path.parent)
