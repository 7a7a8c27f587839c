"""Shared builders for the spool tests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from spool import Envelope
from tests.peers.require import missing


def envelope(n_rcpts: int = 1, *, tag: str = "x", arrival: float = 1_700_000_000.0) -> Envelope:
    return Envelope(
        mail_from=f"sender-{tag}@example.org",
        rcpts=tuple(f"r{i}-{tag}@example.net" for i in range(n_rcpts)),
        did="did:plc:abcdefghijklmnopqrstuvwx",
        attrs={"category": "transactional", "source": "smtp", "subject": f"héllo {tag}"},
        arrival=arrival,
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_spool(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("LOCK"))
    return dst


def segments(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith("seg-"))


def size(path: Path) -> int:
    return os.stat(path).st_size


@contextlib.contextmanager
def mounted_tmpfs(mnt: Path, size: str = "1m") -> Iterator[Path]:
    """A real small filesystem (tmpfs), so ENOSPC comes from the kernel, not from a monkeypatch."""
    mnt.mkdir(exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.strip()
        if "permission denied" in msg.lower() or "operation not permitted" in msg.lower():
            missing(f"mounting a tmpfs needs privileges (EPERM): {msg}")
        pytest.fail(f"mount failed: {msg}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill_disk(path: Path) -> None:
    """Write ``path`` until the filesystem says ENOSPC (someone else's file eating the disk)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = b"\0" * 4096
        while True:
            try:
                os.write(fd, block)
            except OSError:
                block = block[: len(block) // 2]
                if not block:
                    return
    finally:
        os.close(fd)
