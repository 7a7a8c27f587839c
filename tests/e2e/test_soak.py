"""The 10-cycle version of scripts/soak (issue 14's proof): what was acknowledged is exactly what happens."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import soak


@pytest.mark.slow
def test_soak_kill9_and_sigterm_cycles(tmp_path: Path) -> None:
    results = soak.run(10, 3, base=tmp_path)
    kill, term = results["kill"], results["sigterm"]
    assert kill.acknowledged > 50, "the soak did not exercise much"
    assert kill.lost == []
    assert kill.unknown == []
    assert kill.wrong_status == []
    assert kill.unexplained_duplicates == []  # duplicates only for messages in flight at a kill
    assert term.acknowledged > 10
    assert term.lost == [] and term.unknown == [] and term.wrong_status == []
    assert term.duplicates == {}
    assert term.cut_but_spooled == []
    assert term.bad_exit == []
