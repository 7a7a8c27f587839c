"""Migration 9: a domain's default category, and the tags/metadata of a message row (issue 18)."""

from __future__ import annotations

import pytest

from relay.accept import sendmeta
from relay.store.base import NotFound, Store
from tests.store.conftest import DID_A, add_domain, new_message


def test_default_category_round_trips(store: Store) -> None:
    store.create_member(DID_A)
    assert add_domain(store, DID_A, "mail.example.com").default_category == ""
    assert store.set_default_category("MAIL.example.com", "transactional").default_category == "transactional"
    assert store.get_domain("mail.example.com").default_category == "transactional"  # type: ignore[union-attr]
    assert store.set_default_category("mail.example.com", "").default_category == ""
    with pytest.raises(NotFound):
        store.set_default_category("nope.example", "transactional")


def test_tags_and_metadata_are_stored_with_the_row(store: Store) -> None:
    attrs = sendmeta.attrs(["welcome", "v2"], {"user_id": "42"})
    store.insert_messages([new_message(11, tags=attrs["tags"], metadata=attrs["metadata"]), new_message(12)])
    row = store.get_message(11)
    assert row is not None and sendmeta.tags_of(row.tags) == ["welcome", "v2"]
    assert sendmeta.metadata_of(row.metadata) == {"user_id": "42"}
    plain = store.get_message(12)
    assert plain is not None and sendmeta.tags_of(plain.tags) == [] and sendmeta.metadata_of(plain.metadata) == {}


def test_unreadable_meta_never_raises() -> None:
    assert sendmeta.tags_of("{not json") == [] and sendmeta.tags_of('{"a": 1}') == []
    assert sendmeta.metadata_of("[1]") == {} and sendmeta.metadata_of('{"a": 1, "b": "x"}') == {"b": "x"}
