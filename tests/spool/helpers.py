"""Shared builders for the spool tests."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from spool import Envelope


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
