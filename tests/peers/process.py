"""Stopping a peer's process: SIGTERM (every peer here shuts down cleanly on it), SIGKILL after a grace
period, and always reaped, so no test leaves a zombie or a listening port behind."""

from __future__ import annotations

import subprocess
from typing import Any


def terminate(proc: subprocess.Popen[Any] | None, grace: float = 5.0) -> bool:
    """End ``proc`` (None or already exited: nothing to do); True when SIGTERM did not do it within
    ``grace`` s and it was killed."""
    if proc is None or proc.poll() is not None:
        return False
    proc.terminate()
    try:
        proc.wait(timeout=grace)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return True
