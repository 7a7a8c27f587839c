from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import ConfigError, load

ENV = {"ATMOS_ADMIN_TOKEN": "a" * 20, "ATMOS_SECRET_KEY": "s" * 20}


def _load(tmp_path: Path, body: str) -> object:
    path = tmp_path / "atmos.toml"
    path.write_text(f'state_dir = "{tmp_path}"\n' + body)
    return load(path, dev=True, env=ENV)


def test_identity_table(tmp_path: Path) -> None:
    cfg = _load(tmp_path, '[identity]\nplc_url = "http://localhost:2582"\nhandle_resolution = "well-known-at"\n'
                          'handle_resolver_url = "http://localhost:2583"\n[testing]\nallow_loopback_peers = true\n')
    assert cfg.identity.plc_url == "http://localhost:2582"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="identity.handle_resolution"):
        _load(tmp_path, '[identity]\nhandle_resolution = "guess"\n')
    with pytest.raises(ConfigError, match="identity.handle_resolver_url"):
        _load(tmp_path, '[identity]\nhandle_resolution = "well-known-at"\n')
    with pytest.raises(ConfigError, match="identity.nope: unknown key"):
        _load(tmp_path, '[identity]\nnope = 1\n')
