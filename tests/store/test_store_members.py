"""Members, domains and API key hashes."""

from __future__ import annotations

import pytest

from relay.store import DomainLimitReached, DomainTaken, InvalidRow, NotFound
from relay.store.base import Store

from .conftest import DID_A, DID_B, FakeClock, Opener, add_domain

DID_C = "did:web:example.org"


def test_create_member_is_idempotent(store: Store, clock: FakeClock) -> None:
    first = store.create_member(DID_A, "Alice.Example.COM")
    clock.advance(10)
    again = store.create_member(DID_A)
    assert again == first
    assert first.handle == "alice.example.com"
    assert first.status == "active" and first.suspension_reason is None
    assert first.created_at == first.updated_at == clock.now - 10
    assert store.list_members() == [first]


def test_create_member_upserts_the_handle(store: Store, clock: FakeClock) -> None:
    store.create_member(DID_A, "old.example.com")
    clock.advance(5)
    updated = store.create_member(DID_A, "new.example.com")
    assert updated.handle == "new.example.com"
    assert updated.updated_at == clock.now
    assert store.get_member_by_handle("old.example.com") is None


def test_handle_lookup_is_case_insensitive(store: Store) -> None:
    store.create_member(DID_A, "alice.example.com")
    found = store.get_member_by_handle("@ALICE.Example.com")
    assert found is not None and found.did == DID_A
    assert store.get_member_by_handle("bob.example.com") is None


def test_a_handle_moves_to_the_did_that_claims_it_last(store: Store) -> None:
    store.create_member(DID_A, "shared.example.com")
    store.create_member(DID_B, "Shared.example.com")
    owner = store.get_member_by_handle("shared.example.com")
    assert owner is not None and owner.did == DID_B
    previous = store.get_member(DID_A)
    assert previous is not None and previous.handle is None


def test_get_and_list_members(store: Store, clock: FakeClock) -> None:
    assert store.get_member(DID_A) is None
    a = store.create_member(DID_A)
    clock.advance(1)
    b = store.create_member(DID_B, "b.example.com")
    assert store.get_member(DID_B) == b
    assert store.list_members() == [a, b]


def test_suspend_and_reactivate(store: Store) -> None:
    store.create_member(DID_A)
    suspended = store.set_member_status(DID_A, "suspended", "bounce rate 9% over 24 h")
    assert suspended.status == "suspended"
    assert suspended.suspension_reason == "bounce rate 9% over 24 h"
    active = store.set_member_status(DID_A, "active", "ignored")
    assert active.status == "active" and active.suspension_reason is None


def test_member_status_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        store.set_member_status(DID_A, "suspended", "x")
    store.create_member(DID_A)
    with pytest.raises(InvalidRow):
        store.set_member_status(DID_A, "banned", None)  # type: ignore[arg-type]


# -- domains ----------------------------------------------------------------------------------


def test_add_domain_stores_a_pending_lowercase_domain(store: Store, clock: FakeClock) -> None:
    store.create_member(DID_A)
    d = add_domain(store, DID_A, "Mail.Example.COM.")
    assert d.domain == "mail.example.com"
    assert (d.did, d.selector, d.verify_token) == (DID_A, "atmosabc123", "tok")
    assert (d.rsa_private, d.ed25519_private) == (b"rsa-ciphertext", b"ed-ciphertext")
    assert (d.state, d.dkim_state, d.forward_to, d.verified_at) == ("pending", "unverified", None, None)
    assert d.created_at == clock.now
    assert store.get_domain("MAIL.example.com") == d
    assert store.get_domain("other.example.com") is None


def test_operator_enrollment_can_add_a_verified_domain(store: Store, clock: FakeClock) -> None:
    store.create_member(DID_A)
    d = add_domain(store, DID_A, "example.com", state="verified")
    assert (d.state, d.verified_at) == ("verified", clock.now)


def test_domain_repr_hides_key_material(store: Store) -> None:
    store.create_member(DID_A)
    d = add_domain(store, DID_A, "example.com")
    assert "ciphertext" not in repr(d)


def test_at_most_two_domains_per_did(store: Store) -> None:
    store.create_member(DID_A)
    add_domain(store, DID_A, "one.example")
    add_domain(store, DID_A, "two.example")
    with pytest.raises(DomainLimitReached) as info:
        add_domain(store, DID_A, "three.example")
    assert info.value.did == DID_A and info.value.limit == 2
    assert [d.domain for d in store.domains_for(DID_A)] == ["one.example", "two.example"]


def test_a_verified_domain_of_another_did_is_taken(store: Store) -> None:
    store.create_member(DID_A)
    store.create_member(DID_B)
    add_domain(store, DID_A, "example.com", state="verified")
    with pytest.raises(DomainTaken) as info:
        add_domain(store, DID_B, "EXAMPLE.com")
    assert info.value.domain == "example.com"
    assert store.domains_for(DID_B) == []


def test_pending_claims_compete_and_the_first_proof_wins(store: Store) -> None:
    """A squatter's pending claim never locks the real owner out (issue 15)."""
    for did in (DID_A, DID_B, DID_C):
        store.create_member(did)
    squat = add_domain(store, DID_A, "example.com")
    real = add_domain(store, DID_B, "example.com", selector="atmosbbb000", verify_token="token-b")
    assert (squat.claim, real.claim, real.did, real.state) == (False, True, DID_B, "pending")
    assert [d.domain for d in store.domains_for(DID_B)] == ["example.com"]
    assert add_domain(store, DID_B, "example.com") == real  # re-adding returns the claim
    won = store.promote_claim("example.com", DID_B)
    assert (won.did, won.state, won.selector, won.verify_token, won.claim) == (
        DID_B, "verified", "atmosbbb000", "token-b", False)
    assert store.domains_for(DID_A) == [] and store.get_domain("example.com") == won
    with pytest.raises(DomainTaken):
        add_domain(store, DID_C, "example.com")


def test_the_domains_own_pending_row_proving_first_drops_the_claims(store: Store) -> None:
    store.create_member(DID_A)
    store.create_member(DID_B)
    add_domain(store, DID_A, "example.com")
    add_domain(store, DID_B, "example.com")
    store.set_domain_state("example.com", "verified")
    assert store.domains_for(DID_B) == []
    with pytest.raises(DomainTaken):
        store.promote_claim("example.com", DID_B)


def test_pending_claims_expire_and_release_frees_a_domain(open_backend: Opener) -> None:
    now = [1_000_000.0]
    store = open_backend(clock=lambda: now[0])
    for did in (DID_A, DID_B, DID_C):
        store.create_member(did)
    add_domain(store, DID_A, "example.com")
    now[0] += 3600
    add_domain(store, DID_B, "example.com")
    now[0] += 7 * 86400 - 1800  # A's claim is over 7 days old, B's is not
    assert store.expire_claims(7 * 86400) == [("example.com", DID_A)]
    row = store.get_domain("example.com")
    assert row is not None and (row.did, row.state, row.claim) == (DID_B, "pending", False)  # B moved up
    add_domain(store, DID_C, "example.com", state="verified")  # the operator vouches for C
    assert store.domains_for(DID_B) == [] and store.get_domain("example.com").did == DID_C  # type: ignore[union-attr]
    assert store.release_domain("example.com") == 1
    assert store.get_domain("example.com") is None
    add_domain(store, DID_A, "example.com")  # free again


def test_re_adding_own_domain_returns_it_unchanged_even_at_the_limit(store: Store) -> None:
    store.create_member(DID_A)
    first = add_domain(store, DID_A, "one.example")
    add_domain(store, DID_A, "two.example")
    again = add_domain(store, DID_A, "one.example", selector="atmosnew000", rsa_private=b"new")
    assert again == first


def test_add_domain_needs_a_member(store: Store) -> None:
    with pytest.raises(NotFound):
        add_domain(store, DID_C, "example.com")


def test_set_domain_state_keeps_first_verification_time(store: Store, clock: FakeClock) -> None:
    store.create_member(DID_A)
    add_domain(store, DID_A, "example.com")
    verified = store.set_domain_state("example.com", state="verified")
    assert (verified.state, verified.dkim_state, verified.verified_at) == (
        "verified",
        "unverified",
        clock.now,
    )
    first_time = clock.now
    clock.advance(3600)
    flapped = store.set_domain_state("example.com", state="pending")
    assert flapped.state == "pending" and flapped.verified_at == first_time
    again = store.set_domain_state("example.com", state="verified", dkim_state="verified")
    assert (again.state, again.dkim_state, again.verified_at) == ("verified", "verified", first_time)


def test_set_dkim_state_alone(store: Store) -> None:
    store.create_member(DID_A)
    add_domain(store, DID_A, "example.com")
    d = store.set_domain_state("example.com", None, "verified")
    assert (d.state, d.dkim_state, d.verified_at) == ("pending", "verified", None)


def test_set_forward_to(store: Store) -> None:
    store.create_member(DID_A)
    add_domain(store, DID_A, "example.com")
    assert store.set_forward_to("example.com", "me@inbox.example").forward_to == "me@inbox.example"
    assert store.set_forward_to("example.com", None).forward_to is None


def test_domain_mutators_on_unknown_domain(store: Store) -> None:
    with pytest.raises(NotFound):
        store.set_domain_state("nope.example", state="verified")
    with pytest.raises(NotFound):
        store.set_forward_to("nope.example", "x@y.example")


# -- API keys ---------------------------------------------------------------------------------


def test_api_key_hash_set_replace_get(store: Store) -> None:
    store.create_member(DID_A)
    assert store.get_api_key_hash(DID_A) is None
    store.set_api_key_hash(DID_A, "$2b$04$first")
    store.set_api_key_hash(DID_A, "$2b$04$second")
    assert store.get_api_key_hash(DID_A) == "$2b$04$second"
    with pytest.raises(NotFound):
        store.set_api_key_hash(DID_B, "$2b$04$x")
