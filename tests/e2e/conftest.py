from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.relayproc import RelayProcess, TLSFiles, make_tls

DID = "did:plc:e2eaaaaaaaaaaaaaaaaaaaaa"
DOMAIN = "mail.example.com"
HANDLE = "alice.example.com"


@dataclass
class Member:
    did: str
    domain: str
    handle: str
    key: str


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles, request: Any) -> Iterator[RelayProcess]:
    extra = getattr(request.module, "EXTRA_TOML", "")
    smtp = getattr(request.module, "SMTP_TOML", "")
    proc = RelayProcess(base=tmp_path_factory.mktemp("relay"), tls=tls_files, extra_toml=extra, smtp_toml=smtp)
    proc.write_config()
    info = proc.enroll(DID, DOMAIN, HANDLE)
    proc.member = Member(DID, DOMAIN, HANDLE, info["api_key"])  # type: ignore[attr-defined]
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.stop()


@pytest.fixture(scope="module")
def member(relay: RelayProcess) -> Member:
    m: Member = relay.member  # type: ignore[attr-defined]
    return m


@pytest.fixture(scope="module")
def client_ctx(tls_files: TLSFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files.ca_pem))


def message(sender: str, to: str, subject: str = "hello", body: str = "Hello there.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test>\r\n\r\n"
            + body).encode()


__all__ = ["Path", "message"]
