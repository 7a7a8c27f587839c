"""Independent verification by OpenDKIM (``opendkim-testmsg``, libopendkim 2.11) and by dkimpy's
``dkimverify`` console script, both resolving the keys over real DNS from Knot.

Both programs use the system resolver (/etc/resolv.conf: an address, always port 53), so they run in
private network and mount namespaces where a Knot with the same zones listens on 127.0.0.1:53 and a
resolv.conf naming it is bind-mounted over /etc/resolv.conf (tests/dkim/netns.py); nothing outside
changes.

``opendkim-testmsg`` prints nothing and exits 0 when the message verifies. With several signatures it
reports success when ANY one passes, so each signature is checked in a message that carries that one
alone (the signatures do not cover each other). This libopendkim build verifies ed25519-sha256 too:
a tampered Ed25519-only message fails with "Bad signature", a missing key with "Key retrieval failed".
``dkimverify --index i`` checks the i-th signature of the full message (dkimpy's script, run from the
venv; it reports a bad body hash by an uncaught ValidationError, exit status 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.dkim import SigningKey, sign
from tests.dkim.helpers import MEMBER, Identities, message, only_signature
from tests.dkim.netns import Job, Result, require_netns, run_in_netns
from tests.peers.knot import require_knot
from tests.peers.require import require

ALGORITHMS = ["member rsa-sha256", "member ed25519-sha256", "operator rsa-sha256"]

TAMPER: dict[str, Callable[[bytes], bytes]] = {
    "body": lambda m: m.replace(b"Hello Bob", b"Hello Bib"),
    "subject": lambda m: m.replace(b"A folded", b"A FOLDED"),
    "second From": lambda m: m.replace(b"From: Alice", b"From: Mallory <m@evil.test>\r\nFrom: Alice", 1),
    "Reply-To added": lambda m: m.replace(b"\r\n\r\n", b"\r\nReply-To: m@evil.test\r\n\r\n", 1),
}


@pytest.fixture(scope="module")
def results(identities: Identities, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    require_knot()
    require_netns()
    testmsg = require("opendkim-testmsg", package="opendkim-tools")
    dkimverify = [str(Path(sys.executable).with_name("dkimverify"))]  # installed by dkimpy beside python
    signed = sign(message(), identities.keys)
    jobs: dict[str, Job] = {}
    for i in range(3):
        alone = only_signature(signed, i)
        jobs[f"opendkim {i}"] = Job([testmsg], alone)
        for what, change in TAMPER.items():
            jobs[f"opendkim {i} {what}"] = Job([testmsg], change(alone))
        jobs[f"dkimverify {i}"] = Job([*dkimverify, "--index", str(i)], signed)
        jobs[f"dkimverify {i} body"] = Job([*dkimverify, "--index", str(i)], TAMPER["body"](signed))
    jobs["opendkim bare-lf input"] = Job([testmsg], only_signature(sign(message().replace(b"\r\n", b"\n"),
                                                                          identities.keys), 1))
    jobs["opendkim empty body"] = Job([testmsg], only_signature(sign(message(b""), identities.keys), 0))
    unpublished = SigningKey(MEMBER, "notpublished", "rsa-sha256", identities.keys[0].key)
    jobs["opendkim unpublished selector"] = Job([testmsg], sign(message(), [unpublished]))
    before = _host_resolv_conf()
    results = run_in_netns(tmp_path_factory.mktemp("netns"), identities.zones(), jobs)
    results["host resolv.conf before"] = Result(0, before, "")
    return results


def _host_resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError as exc:
        return repr(exc)


@pytest.mark.parametrize("index", range(3), ids=ALGORITHMS)
def test_opendkim_verifies_each_signature(results: dict[str, Result], index: int) -> None:
    r = results[f"opendkim {index}"]
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.parametrize("what", list(TAMPER))
@pytest.mark.parametrize("index", range(3), ids=ALGORITHMS)
def test_opendkim_rejects_tampering(results: dict[str, Result], index: int, what: str) -> None:
    r = results[f"opendkim {index} {what}"]
    assert r.returncode != 0, r
    assert "Bad signature" in r.stderr or "Syntax error" in r.stderr, r.stderr  # a second From: a syntax error


@pytest.mark.parametrize("job", ["opendkim bare-lf input", "opendkim empty body"])
def test_opendkim_verifies_edge_cases(results: dict[str, Result], job: str) -> None:
    assert (results[job].returncode, results[job].stderr) == (0, "")


def test_opendkim_looks_keys_up_in_knot(results: dict[str, Result]) -> None:
    r = results["opendkim unpublished selector"]
    assert (r.returncode, r.stderr.strip()) == (70, "opendkim-testmsg: dkim_eom(): Key retrieval failed"), r


def test_host_resolver_untouched(results: dict[str, Result]) -> None:
    # the bind mount lived in the child's mount namespace only
    assert results["host resolv.conf before"].stdout == _host_resolv_conf()


@pytest.mark.parametrize("index", range(3), ids=ALGORITHMS)
def test_dkimverify_script(results: dict[str, Result], index: int) -> None:
    ok, bad = results[f"dkimverify {index}"], results[f"dkimverify {index} body"]
    assert (ok.returncode, ok.stdout.strip()) == (0, "signature ok"), ok
    # dkimpy 1.1's script lets the ValidationError escape: a traceback and exit status 1
    assert bad.returncode != 0 and "signature ok" not in bad.stdout, bad
    assert "body hash mismatch" in bad.stderr, bad
