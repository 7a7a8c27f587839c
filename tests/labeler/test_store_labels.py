"""The labels table: seq order, latest-per-value queries, prefix patterns (SQLite, case-sensitive)."""

from __future__ import annotations

from pathlib import Path

from relay.store.rows import LabelRow
from relay.store.sqlite import SqliteStore


def row(uri: str, val: str, neg: bool = False, src: str = "did:web:l.test") -> LabelRow:
    return LabelRow(src=src, uri=uri, val=val, neg=neg, cts="2025-01-01T00:00:00.000Z", sig=b"s" * 64)


def test_labels_queries(tmp_path: Path) -> None:
    with SqliteStore.open(str(tmp_path / "db.sqlite")) as store:
        assert store.label_seq_bounds() == (0, 0)
        stored = store.add_labels([row("did:plc:a", "relay-member"), row("did:plc:b", "relay-member"),
                                   row("did:plc:a", "relay-member", neg=True), row("did:plc:A", "x"),
                                   row("did:plc:a", "x", src="did:web:other")])
        assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
        assert [r.seq for r in store.labels_after(1, 10)] == [2, 3, 4, 5]
        assert store.labels_after(0, 10)[2].neg is True and store.labels_after(0, 10)[2].sig == b"s" * 64
        latest = store.query_labels(["did:plc:a"], [], 0, 50)
        assert [(r.seq, r.val, r.neg) for r in latest] == [(3, "relay-member", True), (5, "x", False)]
        assert [r.seq for r in store.query_labels(["did:plc:a"], ["did:web:l.test"], 0, 50)] == [3]
        assert [r.seq for r in store.query_labels(["did:plc:*"], [], 0, 50)] == [2, 3, 4, 5]  # case-sensitive
        assert [r.seq for r in store.query_labels(["did:plc:A*"], [], 0, 50)] == [4]
        assert [r.seq for r in store.query_labels(["*"], [], 3, 2)] == [4, 5]
        assert [r.seq for r in store.query_labels(["did:plc:_*", "did:plc:b"], [], 0, 50)] == [2]  # no LIKE wildcards
        assert store.label_seq_bounds() == (1, 5)
