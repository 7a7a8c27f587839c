from pathlib import Path

import pytest

from relay.config import Addr, ConfigError, load

ENV = {"ATMOS_ADMIN_TOKEN": "t" * 32, "ATMOS_SECRET_KEY": "s" * 32}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "atmos.toml"
    path.write_text(text)
    return path


def test_dev_defaults_match_design(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, f'state_dir = "{tmp_path}/state"\n'), dev=True, env={})
    assert cfg.smtp.submission_addr == Addr("127.0.0.1", 2587)
    assert cfg.smtp.submissions_addr == Addr("127.0.0.1", 2465)
    assert cfg.smtp.inbound_addr == Addr("127.0.0.1", 2525)
    assert cfg.http.addr == Addr("127.0.0.1", 8080)
    assert cfg.limits.message_size == 25 * 1024 * 1024
    assert cfg.limits.json_body == 14 * 1024 * 1024  # 10 MiB of attachments in base64, plus the text
    assert cfg.limits.attachment_bytes == 10 * 1024 * 1024
    assert cfg.store_url == f"sqlite:///{tmp_path}/state/relay.db"
    assert cfg.public_url == "http://127.0.0.1:8080"


def test_dev_secrets_generated_0600_and_stable(tmp_path: Path) -> None:
    path = write(tmp_path, f'state_dir = "{tmp_path}/state"\n')
    first = load(path, dev=True, env={})
    second = load(path, dev=True, env={})
    assert first.admin_token == second.admin_token and len(first.admin_token) >= 16
    assert first.secret_key == second.secret_key
    mode = (tmp_path / "state" / "secrets" / "secret_key").stat().st_mode & 0o777
    assert mode == 0o600


def test_env_secrets_win(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, f'state_dir = "{tmp_path}"\n'), dev=True, env=ENV)
    assert cfg.admin_token == "t" * 32 and cfg.secret_key == b"s" * 32


def test_production_needs_secrets_and_tls(tmp_path: Path) -> None:
    path = write(tmp_path, f'state_dir = "{tmp_path}"\n')
    with pytest.raises(ConfigError, match="tls.cert_file"):
        load(path, dev=False, env=ENV)
    path = write(tmp_path, f'state_dir = "{tmp_path}"\n[tls]\ncert_file = "c"\nkey_file = "k"\n')
    with pytest.raises(ConfigError, match="ATMOS_ADMIN_TOKEN"):
        load(path, dev=False, env={})
    cfg = load(path, dev=False, env=ENV)
    assert cfg.smtp.submission_addr == Addr("0.0.0.0", 587)
    assert cfg.smtp.submissions_addr == Addr("0.0.0.0", 465)
    assert cfg.smtp.inbound_addr == Addr("0.0.0.0", 25)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n", "bogus"),
        ("[smtp]\nsubmision_addr = '127.0.0.1:1'\n", "smtp.submision_addr"),
        ("[smtp]\nsubmission_addr = 'nohost'\n", "smtp.submission_addr"),
        ("[smtp]\nsubmission_addr = '127.0.0.1:99999'\n", "smtp.submission_addr"),
        ("[limits]\nmessage_size = 'big'\n", "limits.message_size"),
        ("[limits]\nmessage_size = -1\n", "limits.message_size"),
        ("[limits]\nhourly = true\n", "limits.hourly"),
        ("[delivery]\nnameservers = '127.0.0.1'\n", "delivery.nameservers"),
        ("[store]\nurl = 'mysql://x'\n", "store.url"),
        ("secret_key = 'abc'\n", "secret_key"),
        ("smtp = 3\n", "smtp"),
        ("this is not toml\n", "invalid TOML"),
        # Issue 14: a cap below two segments wedged the spool for good; the error names both keys.
        ("[spool]\nmax_bytes = 1000000\n", r"spool.max_bytes \(1000000\) must be 0 or at least twice spool.segment_bytes"),
        ("[spool]\nsegment_bytes = 100\n", "spool.segment_bytes"),
        ("[spool]\nreserve_bytes = -1\n", "spool.reserve_bytes"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        load(write(tmp_path, f'state_dir = "{tmp_path}"\n' + text), dev=True, env=ENV)


def test_port_zero_and_ipv6(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, f'state_dir = "{tmp_path}"\n[http]\naddr = "[::1]:0"\n'), dev=True, env=ENV)
    assert cfg.http.addr == Addr("::1", 0)
    assert str(cfg.http.addr) == "[::1]:0"


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load(None, dev=True, env=ENV)
    with pytest.raises(AttributeError):
        cfg.dev = False  # type: ignore[misc]


def test_dane_needs_a_local_validator(tmp_path: Path) -> None:
    def write(text: str) -> Path:
        path = tmp_path / "atmos.toml"
        path.write_text(text)
        return path

    with pytest.raises(ConfigError, match="delivery.tls: dane needs delivery.dnssec"):
        load(write('[delivery]\ntls = "dane"\n'), dev=True, env={})
    with pytest.raises(ConfigError, match="delivery.dnssec: 192.0.2.53 is not on this host"):
        load(write('[delivery]\ndnssec = true\nnameservers = ["192.0.2.53"]\n'), dev=True, env={})
    with pytest.raises(ConfigError, match="delivery.dnssec: set delivery.nameservers"):
        load(write("[delivery]\ndnssec = true\n"), dev=True, env={})
    cfg = load(write('[delivery]\ndnssec = true\nnameservers = ["127.0.0.1:5353"]\n'), dev=True, env={})
    assert cfg.delivery.tls_level == "dane"
    assert load(write("[delivery]\nport = 25\n"), dev=True, env={}).delivery.tls_level == "may"
    with pytest.raises(ConfigError, match="delivery.tls: expected may, verify, none or dane"):
        load(write('[delivery]\ntls = "strict"\n'), dev=True, env={})
