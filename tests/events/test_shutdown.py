"""A relay stopping with a console attached: the stream ends with 1001 and the relay exits promptly.

"Promptly" without a stopwatch: the relay's shutdown grace is set far beyond the test's deadline, so a
relay that waited for the open websocket (instead of closing it) would still be running at the deadline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from relay.events import Snapshot, decode
from tests.e2e.relayproc import RelayProcess, make_tls
from tests.events.conftest import closed_by_server

GRACE = 120.0  # hypercorn's graceful timeout is the SMTP grace
DEADLINE = 30.0  # well below GRACE: being held up by the websocket cannot pass


@pytest.mark.trio
async def test_console_closed_1001_on_sigterm(tmp_path: Path) -> None:
    proc = RelayProcess(base=tmp_path / "relay", tls=make_tls(tmp_path / "tls"), shutdown_grace=GRACE)
    proc.base.mkdir()
    proc.start()
    try:
        url = proc.http.replace("http://", "ws://") + "/admin/ws"
        token = proc.full_env()["ATMOS_ADMIN_TOKEN"]
        async with open_websocket_url(url, extra_headers=[(b"Authorization", f"Bearer {token}".encode())]) as ws:
            assert isinstance(decode(await ws.get_message())[0], Snapshot)
            assert proc.proc is not None
            proc.proc.terminate()
            assert await closed_by_server(ws, within=10) == 1001
        popen = proc.proc
        rc = await trio.to_thread.run_sync(lambda: popen.wait(timeout=DEADLINE))
        proc.stop()  # (already exited: only collects the output)
        assert rc == 0
    finally:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
    assert "Traceback" not in "".join(proc.output)
