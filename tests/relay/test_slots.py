"""relay.net.slots: fail-fast caps per key and in total."""

from __future__ import annotations

import pytest

from relay.net.slots import Slots, SlotsFull


def test_per_key_and_total_caps_refuse_at_once_and_release() -> None:
    slots = Slots(total=3, per_key=2)
    with slots.hold("a"), slots.hold("a"):
        with pytest.raises(SlotsFull) as one, slots.hold("a"):
            pass
        assert one.value.per_key
        with slots.hold("b"):
            with pytest.raises(SlotsFull) as total, slots.hold("c"):
                pass
            assert not total.value.per_key
        assert slots.in_use == 2
    assert slots.in_use == 0 and slots.refused == 2
    with slots.hold("a"), slots.hold("a"):  # released: a's share is free again
        pass


def test_an_exception_inside_releases_the_slot() -> None:
    slots = Slots(total=1, per_key=1)
    with pytest.raises(RuntimeError), slots.hold("a"):
        raise RuntimeError("boom")
    with slots.hold("a"):
        assert slots.in_use == 1
