"""The one way a test asks for a real peer (a program, a Python module, a privilege).

    from tests.peers.require import require, missing

    swaks = require("swaks")                      # the absolute path, or the test is skipped
    knotd = require("knotd", package="knot")      # the Debian package that ships it, for the hint
    missing("mounting a tmpfs needs root")        # any other missing precondition

A missing peer is a *skip* here and nowhere else decides more: under ``CI=true`` the conftest hook
(``pytest_runtest_makereport`` below, imported by tests/conftest.py) turns every skip into a failure,
so a machine without the peer can never pass CI by testing less. Locally the skip says what to install.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import NoReturn

import pytest

INSTALL_HINT = "run scripts/install-test-peers"
# Debian installs daemons (knotd, smtp-sink, postfix) in /usr/sbin, which a non-root PATH may lack.
_SBIN = (Path("/usr/sbin"), Path("/usr/local/sbin"))


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Stop this test: a peer it needs is not here (a skip locally; a failure under CI=true)."""
    pytest.skip(reason)


def find(name: str) -> str | None:
    """The absolute path of program ``name`` (PATH, then /usr/sbin and /usr/local/sbin), or None."""
    return shutil.which(name) or next((str(d / name) for d in _SBIN if os.access(d / name, os.X_OK)), None)


def require(name: str, *, package: str | None = None) -> str:
    """The absolute path of program ``name``; the test stops (see ``missing``) when it is not installed."""
    path = find(name)
    if path is None:
        missing(f"{name} is not installed (Debian package {package or name}): {INSTALL_HINT}")
    return path


def require_module(name: str, why: str) -> None:
    """A Python module a test needs beyond the relay's own dependencies (``pip install -e '.[dev]'``)."""
    try:
        importlib.import_module(name)
    except ImportError:
        missing(f"Python module {name} is not installed ({why}): pip install -e '.[dev]'")


# ---- the conftest hook --------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.skipped and under_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a test may not skip (a missing peer is a failure here): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, None, None]:
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if report.skipped and under_ci():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true: a module may not skip (a missing peer is a failure here): {reason}"
