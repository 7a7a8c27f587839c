"""``scripts/fuzz --quick`` in CI: a few hundred hostile SMTP sessions and HTTP requests against a real
``atmos serve --dev``; the relay never exits and logs no traceback (issue 13). A well-behaved
member sending beside it gets every message delivered. The full size (20,000 SMTP + 5,000 HTTP) is run
by hand: ``scripts/fuzz``."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_battery_leaves_the_relay_standing() -> None:
    run = subprocess.run([str(ROOT / "scripts" / "fuzz"), "--quick"], cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    out = run.stdout
    assert "process exits: 0" in out, out + run.stderr[-3000:]
    assert "tracebacks in the log: 0" in out, out
    assert "tracebacks on the wire: 0" in out, out
    member = out.split("well-behaved client")[1].split("\n")[0]  # its mail went through during the battery
    tried, delivered = int(member.split(": ")[1].split(" tried")[0]), int(member.split(" delivered")[0].rsplit(" ", 1)[1])
    assert tried > 0 and delivered == tried and " 0 failed" in member, out
    assert "final stop (SIGTERM): rc 0" in out, out
    cases = int(out.split("cases run: ")[1].split(" ")[0])
    assert cases >= 500, out  # 330 SMTP + 180 HTTP: the battery really ran
    assert run.returncode == 0, out + run.stderr[-3000:]
