"""``atmos admin`` as an operator types it: options in any position, and a relay started with --dev."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from relay.app.cli import main
from tests.e2e.relayproc import ATMOS, RelayProcess, make_tls

DID = "did:plc:cliaaaaaaaaaaaaaaaaaaaaa"
DOMAIN = "mail.cli.example.com"


@pytest.fixture
def production(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RelayProcess:
    proc = RelayProcess(base=tmp_path, tls=make_tls(tmp_path / "tls"))
    proc.write_config()
    for key, value in proc.full_env().items():
        if key.startswith("ATMOS_"):
            monkeypatch.setenv(key, value)
    return proc


def test_options_are_accepted_in_any_position(production: RelayProcess, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(production.config_path)
    assert main(["admin", "enroll", "--did", DID, "--domain", DOMAIN, "--skip-dns", "--config", config,
                 "--json"]) == 0
    enrolled = json.loads(capsys.readouterr().out)
    assert enrolled["did"] == DID and enrolled["state"] == "verified" and enrolled["api_key"]
    for argv in (["admin", "members", "list", "--json", "-c", config],
                 ["admin", "-c", config, "members", "list", "--json"],
                 ["--config", config, "admin", "members", "list", "--json"]):
        assert main(argv) == 0, argv
        listed = json.loads(capsys.readouterr().out)
        assert [m["did"] for m in listed] == [DID], argv


def test_admin_manages_a_relay_started_with_dev(tmp_path: Path) -> None:
    relay = RelayProcess(base=tmp_path, tls=make_tls(tmp_path / "tls"), dev=True)
    relay.base.mkdir(exist_ok=True)
    relay.write_config()
    assert "[tls]" not in relay.config_path.read_text()  # a production load of this file is refused
    relay.start()
    try:
        # Plain --config: the running relay's state/run.json says it is a dev relay.
        enrolled = relay.admin("enroll", "--did", DID, "--domain", DOMAIN, "--skip-dns")
        assert enrolled["did"] == DID and enrolled["api_key"]
        # Commands that talk to the relay use the secrets it generated (a wrong token would get 401).
        missing = relay.admin("queue", "show", "999999", check=False)
        assert missing.returncode == 1 and "404" in missing.stderr, missing.stderr
        # --dev, anywhere, says the same without the run file.
        (relay.state_dir / "run.json").rename(relay.state_dir / "run.json.moved")
        listed = relay.admin("members", "list", "--dev")
        assert DID in [m["did"] for m in listed]  # (beside the dev demo member)
    finally:
        relay.stop()
    assert "Traceback" not in "".join(relay.output)


def test_a_refused_admin_config_says_what_admin_accepts(tmp_path: Path) -> None:
    relay = RelayProcess(base=tmp_path, tls=make_tls(tmp_path / "tls"), dev=True)
    relay.write_config()  # no [tls], and no relay has run: a production config missing its TLS files
    env = relay.full_env()
    env.update({"ATMOS_ADMIN_TOKEN": "a" * 20, "ATMOS_SECRET_KEY": "b" * 20})
    done = subprocess.run([*ATMOS, "admin", "members", "list", "--config", str(relay.config_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "production needs tls.cert_file and tls.key_file" in done.stderr
    assert "--dev" in done.stderr and "--config FILE" in done.stderr and "Traceback" not in done.stderr
