"""Queue-id ranges and node names (relay.cluster.identity), and the move of a pre-node spool."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.cluster.identity import ID_BITS, MAX_NODES, NodeIdentity, first_id, machine_name, owner, worker_name
from relay.cluster.layout import adopt_legacy_spool
from spool import Envelope, SpoolLog


@pytest.mark.parametrize("number", [1, 2, 3, 17, MAX_NODES])
def test_every_id_of_a_range_names_its_node(number: int) -> None:
    lo = first_id(number)
    for queue_id in (lo, lo + 1, lo + (1 << ID_BITS) - 1):
        assert owner(queue_id) == number
    assert owner(lo - 1) == number - 1 if number > 1 else lo == 1
    assert (lo + (1 << ID_BITS) - 1) < 2**53  # JSON numbers stay exact in every client


def test_numbers_outside_the_ranges_are_refused() -> None:
    for bad in (0, MAX_NODES + 1):
        with pytest.raises(ValueError, match="out of range"):
            first_id(bad)


def test_names() -> None:
    assert machine_name("mx1") == "mx1"
    assert machine_name("")  # the host name, cut to a node name
    assert worker_name("mx1", 2) == "mx1-2"


def _spool_with_one_message(directory: Path, first: int) -> int:
    log = SpoolLog.open(directory, first_id=first)
    try:
        env = Envelope(mail_from="a@x.example", rcpts=("b@y.example",), did="did:plc:x", attrs={}, arrival=1.0)
        [accepted] = log.commit([log.draft_message(env, b"Subject: hi\r\n\r\nhi\r\n")])
        assert accepted is not None
        return accepted.queue_id
    finally:
        log.close()


def test_a_node_numbers_from_its_range_after_restarts(tmp_path: Path) -> None:
    node = NodeIdentity("n-2", 2)
    first = _spool_with_one_message(node.spool_dir(tmp_path), node.first_id)
    second = _spool_with_one_message(node.spool_dir(tmp_path), node.first_id)
    assert first == node.first_id and second > first and owner(second) == 2


def test_node_1_adopts_a_spool_from_before_nodes(tmp_path: Path) -> None:
    legacy = tmp_path / "spool"
    queue_id = _spool_with_one_message(legacy, 1)
    assert adopt_legacy_spool(tmp_path, NodeIdentity("n-2", 2)) == 0  # only node 1's range holds those ids
    moved = adopt_legacy_spool(tmp_path, NodeIdentity("n-1", 1))
    assert moved >= 3  # segment, LOCK, record key
    assert not list(legacy.glob("seg-*.log"))
    log = SpoolLog.open_readonly(tmp_path / "spool" / "n-1")
    assert log.get(queue_id) is not None
    assert adopt_legacy_spool(tmp_path, NodeIdentity("n-1", 1)) == 0  # done once
