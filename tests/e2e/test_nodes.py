"""Several nodes, one relay (issue 17): the real ``atmos serve --workers 2`` on SQLite, and two separate
``atmos serve`` processes ("machines") on one real PostgreSQL.

Mail in these tests goes to a closed loopback port (relayproc's default relayhost), so every accepted
message stays deferred in the spool of the node that took it: which node that is follows from its
queue id (relay.cluster.identity.owner).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from relay.cluster.identity import owner
from tests.e2e.conftest import DID, DOMAIN, HANDLE
from tests.e2e.relayproc import RelayProcess, TLSFiles, two_machines
from tests.peers.postgres import postgres_server, postgres_url  # noqa: F401  (registers the fixtures)

ADMIN = {"Authorization": "Bearer admin-token-" + "x" * 20}  # relayproc's ATMOS_ADMIN_TOKEN
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def send(http: str, key: str, subject: str) -> int:
    """One /v1/send on a new connection (so the kernel may hand it to any node): the message id."""
    r = httpx.post(f"{http}/v1/send", headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": DID},
                   json={"from": f"hello@{DOMAIN}", "to": "rcpt@example.org", "subject": subject, "text": "hi"},
                   timeout=20)
    assert r.status_code == 200, r.text
    message_id: int = r.json()["accepted"][0]["messageId"]
    return message_id


def nodes(http: str) -> dict[str, dict[str, Any]]:
    body = httpx.get(f"{http}/admin/api/nodes", headers=ADMIN, timeout=10).json()
    return {n["node"]: n for n in body["nodes"]}


def queue_action(http: str, queue_id: int, action: str) -> dict[str, Any]:
    r = httpx.post(f"{http}/admin/api/queue/{queue_id}/{action}", headers=ADMIN, timeout=20)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def stored_status(http: str, queue_id: int) -> str:
    r = httpx.get(f"{http}/admin/api/queue/{queue_id}", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    status: str = r.json()["store"][0]["status"]
    return status


def test_two_workers_share_the_ports_and_survive_a_kill(tmp_path: Path, tls_files: TLSFiles) -> None:
    relay = RelayProcess(base=tmp_path, tls=tls_files, workers=2)
    relay.write_config()
    key = relay.enroll(DID, DOMAIN, HANDLE)["api_key"]
    relay.start(timeout=60)
    try:
        assert json.loads(relay.output[-1].split(" ", 1)[1])["nodes"] == ["e2e-1", "e2e-2"]
        # Both nodes take connections from the one set of listening sockets, each with its own id range.
        accepted: list[int] = []

        def both_took_some() -> bool:
            accepted.append(send(relay.http, key, f"spread-{len(accepted)}"))
            return {owner(i) for i in accepted} == {1, 2}

        eventually(both_took_some, "messages accepted by both nodes", timeout=60)
        answered = {httpx.get(f"{relay.http}/healthz", timeout=10).json()["node"] for _ in range(60)}
        assert answered <= {"e2e-1", "e2e-2"} and answered, answered
        # A stranger: the node list and queue actions need the admin token, and garbage on the shared SMTP
        # ports (spread over both nodes) ends those connections only.
        for headers, status in (({}, 400), ({"Authorization": "Bearer wrong"}, 401)):  # AUTH_REQUIRED / AUTH_FAILED
            assert httpx.get(f"{relay.http}/admin/api/nodes", headers=headers, timeout=10).status_code == status
            assert httpx.post(f"{relay.http}/admin/api/queue/{accepted[0]}/hold", headers=headers,
                              timeout=10).status_code == status
        for _ in range(20):
            with socket.create_connection(relay.submission, timeout=10) as sock:
                sock.recv(512)
                sock.sendall(b"\xff\xfe\x00EHLO \x80\x81\r\n" + b"A" * 70000 + b"\r\nQUIT\r\n")
                with contextlib.suppress(OSError):
                    while sock.recv(65536):
                        pass
        before = nodes(relay.http)
        assert {n["state"] for n in before.values()} == {"running"}
        assert {n["pid"] for n in before.values()} == {n["pid"] for n in nodes(relay.http).values()}
        assert sum(n["jobs"] for n in before.values()) == 1  # one node runs the cluster's periodic jobs

        # A queue action reaches the owner of the message, whichever node the request lands on.
        target = next(i for i in accepted if owner(i) == 1)

        def hold_from_the_other_node() -> dict[str, Any] | None:
            answer = queue_action(relay.http, target, "hold")
            assert answer["changed"] == 1, answer  # released again below whenever the owner answered
            if answer["node"] == "e2e-2":
                return answer
            assert queue_action(relay.http, target, "release")["changed"] == 1
            return None

        eventually(hold_from_the_other_node, "a hold answered by the node that does not hold the message")
        assert eventually(lambda: stored_status(relay.http, target) == "held", "the hold in the store")

        # kill -9 of one worker: the parent restarts it, its spool is recovered, nothing acknowledged lost.
        victim = before["e2e-1"]["pid"]
        os.kill(victim, signal.SIGKILL)
        later = eventually(lambda: (n := nodes(relay.http))["e2e-1"]["pid"] != victim
                           and n["e2e-1"]["state"] == "running" and n, "node e2e-1 restarted", timeout=60)
        assert later["e2e-2"]["pid"] == before["e2e-2"]["pid"]  # the other node served on meanwhile
        queued = {m["queue_id"]: m for m in relay.admin("queue", "list")}
        assert set(accepted) <= set(queued), sorted(set(accepted) - set(queued))
        assert {queued[i]["node"] for i in accepted} == {"e2e-1", "e2e-2"}
        assert [r["state"] for r in queued[target]["recipients"]] == ["held"]  # recovered as it was
        assert eventually(lambda: queue_action(relay.http, target, "release")["changed"] == 1, "release")
        assert relay.admin("nodes")[0]["node"] == "e2e-1"
    finally:
        rc = relay.stop(timeout=60)
    assert rc == 0, "".join(relay.output[-30:])
    assert not (relay.state_dir / "run.json").exists()


def test_two_machines_on_one_postgresql(tmp_path: Path, tls_files: TLSFiles, postgres_url: str) -> None:  # noqa: F811
    store = f'[store]\nurl = "{postgres_url}"\n'
    with two_machines(tmp_path, tls_files, store, (DID, DOMAIN, HANDLE)) as (a, b, key):
        # The member enrolled through one machine sends through both.
        on_a, on_b = send(a.http, key, "via-alpha"), send(b.http, key, "via-beta")
        assert owner(on_a) != owner(on_b)
        seen = nodes(a.http)
        assert {"alpha-1", "beta-1"} <= set(seen) and seen["beta-1"]["state"] == "running"
        # A message queued on machine A is held and released through machine B's admin API.
        assert queue_action(b.http, on_a, "hold") == {"queue_id": on_a, "action": "hold", "changed": 1,
                                                      "node": "beta-1"}
        assert eventually(lambda: stored_status(b.http, on_a) == "held", "the hold, seen from B")
        assert queue_action(b.http, on_a, "release")["changed"] == 1
        # Pausing a destination on one machine pauses it on every running node.
        r = httpx.post(f"{a.http}/admin/api/destinations/Example.org/pause", headers=ADMIN, timeout=10)
        assert r.status_code == 200 and r.json()["domain"] == "example.org", r.text
        assert eventually(lambda: "example.org" in httpx.get(f"{b.http}/admin/api/queue", headers=ADMIN,
                                                              timeout=10).json()["stats"]["paused_destinations"],
                          "the pause on machine B")
        # /metrics on either machine shows both nodes.
        metrics = httpx.get(f"{b.http}/metrics", timeout=10).text
        assert 'atmos_node_up{node="alpha-1"} 1.0' in metrics and 'atmos_node_up{node="beta-1"} 1.0' in metrics
        assert "atmos_cluster_nodes_running 2.0" in metrics
        assert b.stop(timeout=60) == 0
        # A stopped machine is shown as stopped, and asking it to act is refused at once with its name.
        assert eventually(lambda: nodes(a.http)["beta-1"]["state"] == "stopped", "beta-1 stopped")
        r = httpx.post(f"{a.http}/admin/api/queue/{on_b}/hold", headers=ADMIN, timeout=20)
        assert r.status_code == 400 and "beta-1" in r.text and "not running" in r.text, r.text


def test_two_workers_on_sqlite_hold_the_warming_cap_together(tmp_path: Path, tls_files: TLSFiles) -> None:
    # The default warming tiers (relayproc lifts every cap a test does not set): 5 recipients an hour.
    relay = RelayProcess(base=tmp_path, tls=tls_files, workers=2,
                         extra_toml="[limits]\nwarming_tiers = [[0, 5, 20], [7, 10, 50]]\n")
    relay.write_config()
    key = relay.enroll(DID, DOMAIN, HANDLE)["api_key"]
    relay.start(timeout=60)
    try:
        codes: list[int] = []
        took: set[str] = set()
        for n in range(40):  # new connections: the kernel hands them to either node
            took.add(httpx.get(f"{relay.http}/healthz", timeout=10).json()["node"])
            r = httpx.post(f"{relay.http}/v1/send", headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": DID},
                           json={"from": f"hello@{DOMAIN}", "to": f"r{n}@example.org", "subject": f"cap-{n}",
                                 "text": "hi"}, timeout=20)
            codes.append(r.status_code)
            assert r.status_code in (200, 429), r.text
        assert codes.count(200) == 5, codes
        assert took == {"e2e-1", "e2e-2"}, took  # both nodes served, and together they admitted 5
    finally:
        assert relay.stop(timeout=60) == 0
