"""Suite-wide rules. Under CI=true a skipped test is a failed one (tests/peers/require.py)."""

from tests.clock import thread_clock
from tests.peers.require import pytest_make_collect_report, pytest_runtest_makereport

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport", "thread_clock"]
