"""Errors the spool raises.

    SpoolError
    ├── SpoolFull          the spool may not grow: max_bytes reached, ENOSPC or EDQUOT (-> 452 4.3.1)
    └── SpoolUnavailable   any other I/O failure, not running, locked, read-only (-> 451 4.4.2)

A failed append is never acknowledged, and nothing acknowledged before it is lost:
the log is truncated back to its last good offset before the error is raised.
"""

from __future__ import annotations

import errno


class SpoolError(Exception):
    """Base class: the append (or read) did not happen."""


class SpoolFull(SpoolError):
    """No room: the configured max_bytes, or the filesystem (ENOSPC/EDQUOT)."""


class SpoolUnavailable(SpoolError):
    """The spool cannot take writes right now (I/O error, stopped, locked, read-only)."""


# Quota and space exhaustion are the transient "try later" conditions a sender can wait out;
# everything else (EIO, EROFS, EBADF...) means the spool itself is in trouble.
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def classify(exc: OSError, what: str) -> SpoolError:
    """Map an OSError from a write path to the spool's two public failure kinds."""
    kind = SpoolFull if exc.errno in _FULL_ERRNOS else SpoolUnavailable
    err = kind(f"{what}: {exc.strerror or exc}")
    err.__cause__ = exc
    return err
