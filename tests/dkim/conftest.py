"""The DKIM tests' signing identities, generated once per session (RSA-2048 generation costs ~0.1 s)."""

from __future__ import annotations

import pytest

from tests.dkim.helpers import Identities


@pytest.fixture(scope="session")
def identities() -> Identities:
    return Identities.generate()
