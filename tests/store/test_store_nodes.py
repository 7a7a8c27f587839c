"""The node registry, leases, node commands and per-node spool marks (relay.cluster), on both backends."""

from __future__ import annotations

from relay.store.base import Store
from relay.store.rows import SpoolMark

from .conftest import FakeClock, Opener


def test_a_name_keeps_its_number_and_numbers_are_never_reused(store: Store, clock: FakeClock) -> None:
    a = store.register_node("mx1-1", "mx1", 100)
    b = store.register_node("mx1-2", "mx1", 101)
    assert (a.number, b.number) == (1, 2)
    clock.advance(30)
    again = store.register_node("mx1-1", "mx1", 200)  # a restart: new pid, same number
    assert again.number == 1 and again.pid == 200 and again.started_at == clock.now and again.stopped_at is None
    assert store.register_node("mx2-1", "mx2", 300).number == 3
    assert [n.name for n in store.list_nodes()] == ["mx1-1", "mx1-2", "mx2-1"]


def test_heartbeat_records_stats_and_a_clean_stop(store: Store, clock: FakeClock) -> None:
    node = store.register_node("n-1", "h", 1)
    clock.advance(2)
    store.node_heartbeat(node.number, '{"queue_messages": 3}')
    [row] = store.list_nodes()
    assert row.heartbeat_at == clock.now and row.stats == '{"queue_messages": 3}' and row.stopped_at is None
    store.node_heartbeat(node.number, "{}", stopped=True)
    assert store.list_nodes()[0].stopped_at == clock.now
    assert store.register_node("n-1", "h", 2).stopped_at is None  # started again


def test_a_lease_has_one_holder_until_it_expires_or_is_released(open_backend: Opener, clock: FakeClock) -> None:
    one, two = open_backend(clock=clock), open_backend(clock=clock)  # two nodes, two connections
    assert one.take_lease("jobs", "a", 10.0) == clock.now + 10
    assert two.take_lease("jobs", "b", 10.0) is None
    clock.advance(5)
    assert one.take_lease("jobs", "a", 10.0) == clock.now + 10  # renewed
    assert two.lease_holder("jobs") == "a"
    clock.advance(9.9)
    assert two.take_lease("jobs", "b", 10.0) is None  # still a's
    clock.advance(0.2)
    assert two.take_lease("jobs", "b", 10.0) == clock.now + 10  # a's expired: b takes it
    assert one.take_lease("jobs", "a", 10.0) is None
    assert not one.release_lease("jobs", "a")  # only the holder releases
    assert two.release_lease("jobs", "b")
    assert one.lease_holder("jobs") is None
    assert one.take_lease("jobs", "a", 10.0) is not None


def test_node_commands_wait_for_their_node_and_carry_the_answer(store: Store, clock: FakeClock) -> None:
    first = store.add_node_command(2, "hold", "1099511627777")
    store.add_node_command(3, "hold", "5")
    pending = store.pending_node_commands(2)
    assert [(c.id, c.action, c.target, c.done_at) for c in pending] == [(first, "hold", "1099511627777", None)]
    clock.advance(1)
    store.finish_node_command(first, True, '{"changed": 1}')
    done = store.get_node_command(first)
    assert done is not None and done.ok is True and done.result == '{"changed": 1}' and done.done_at == clock.now
    assert store.pending_node_commands(2) == []
    clock.advance(100)
    assert store.purge_node_commands(clock.now - 50) == 2
    assert store.get_node_command(first) is None


def test_each_node_has_its_own_spool_mark(store: Store) -> None:
    store.apply_batch([SpoolMark(3, 100, 1.0, node=1)])
    store.apply_batch([SpoolMark(7, 10, 1.0, node=2)])
    store.apply_batch([SpoolMark(4, 0, 2.0, node=1)])
    assert store.spool_mark(1) == (4, 0) and store.spool_mark(2) == (7, 10) and store.spool_mark(3) is None
