from __future__ import annotations

import ssl

import pytest
import trustme

from tests.smtp.server_support import RecordingHandler, tls_contexts


@pytest.fixture(scope="session")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return tls_contexts(trustme.CA())


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()
