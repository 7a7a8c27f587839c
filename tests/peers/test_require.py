"""The test-peer rule itself: a missing peer skips locally and fails the run under CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import knot as knot_peer
from tests.peers import require as require_module
from tests.peers.require import find, require

ROOT = Path(__file__).resolve().parents[2]

INNER = """
import pytest
from tests.peers.require import require, missing

def test_needs_a_program_that_is_not_there():
    require("atmos-no-such-peer-program")

@pytest.mark.skipif(True, reason="a skipif marker is a skip too")
def test_marked():
    pass

def test_fine():
    pass

@pytest.mark.xfail(reason="an expected failure is not a skip", strict=True)
def test_xfail():
    raise AssertionError("expected")
"""


def _run_inner(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rA",
            "-p",
            "tests.peers.require",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_inner.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_missing_peer_skips_locally(tmp_path: Path) -> None:
    done = _run_inner(tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 2 skipped, 1 xfailed" in done.stdout, done.stdout
    assert "atmos-no-such-peer-program is not installed" in done.stdout
    assert "run scripts/install-test-peers" in done.stdout


def test_missing_peer_fails_the_run_under_ci(tmp_path: Path) -> None:
    done = _run_inner(tmp_path, "true")
    assert done.returncode == 1, done.stdout + done.stderr
    # the skipif marker skips in setup, so its failure is reported as an error: the run fails either way
    assert "1 failed, 1 passed, 1 xfailed, 1 error" in done.stdout, done.stdout
    assert "CI=true: a test may not skip" in done.stdout
    assert "atmos-no-such-peer-program is not installed" in done.stdout


def test_require_finds_sbin_programs_and_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert require("sh") == find("sh") and Path(require("sh")).is_absolute()
    monkeypatch.setattr(require_module, "find", lambda name: None)
    with pytest.raises(pytest.skip.Exception, match=r"knotd is not installed \(Debian package knot\)"):
        knot_peer.require_knot()
