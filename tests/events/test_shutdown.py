"""A relay stopping with a console attached: the stream ends with 1001 and the relay exits promptly."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from relay.events import Snapshot, decode
from tests.e2e.relayproc import RelayProcess, make_tls
from tests.events.conftest import closed_by_server


@pytest.mark.trio
async def test_console_closed_1001_on_sigterm(tmp_path: Path) -> None:
    proc = RelayProcess(base=tmp_path / "relay", tls=make_tls(tmp_path / "tls"))
    proc.base.mkdir()
    proc.start()
    try:
        url = proc.http.replace("http://", "ws://") + "/admin/ws"
        token = proc.full_env()["ATMOS_ADMIN_TOKEN"]
        async with open_websocket_url(url, extra_headers=[(b"Authorization", f"Bearer {token}".encode())]) as ws:
            assert isinstance(decode(await ws.get_message())[0], Snapshot)
            assert proc.proc is not None
            t0 = time.monotonic()
            proc.proc.terminate()
            assert await closed_by_server(ws, within=10) == 1001
        popen = proc.proc
        rc = await trio.to_thread.run_sync(lambda: popen.wait(timeout=20))
        proc.stop()  # (already exited: only collects the output)
        # Not held up by the open websocket (hypercorn's graceful timeout is the SMTP grace, 3 s here).
        assert rc == 0 and time.monotonic() - t0 < 3
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
    assert "Traceback" not in "".join(proc.output)
