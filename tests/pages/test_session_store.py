from __future__ import annotations

from pathlib import Path

from relay.store import open_store
from relay.store.rows import WebSession


def test_web_sessions_expire_update_and_delete(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    try:
        row = WebSession(id_hash="h1", csrf="c", created_at=100.0, expires_at=200.0)
        store.put_web_session(row)
        assert store.get_web_session("h1", 150.0) == row
        assert store.get_web_session("h1", 200.0) is None  # expired
        signed = WebSession(id_hash="h1", csrf="c2", created_at=100.0, expires_at=300.0, did="did:plc:x",
                            handle="a.test", data='{"k":1}')
        store.put_web_session(signed)
        assert store.get_web_session("h1", 250.0) == signed
        store.put_web_session(WebSession(id_hash="h2", csrf="c", created_at=0.0, expires_at=10.0))
        assert store.purge_web_sessions(20.0) == 1
        assert store.delete_web_session("h1") and not store.delete_web_session("h1")
    finally:
        store.close()
