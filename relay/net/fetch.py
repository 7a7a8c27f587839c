"""Outbound HTTP reads of what strangers serve (DID documents, handle well-knowns, OAuth metadata and
endpoints, PDS records), each one bounded.

A sign-in makes the relay fetch from servers the member names. Read whole with only a per-read
timeout, a server that streams forever grew the relay to 1.2 GiB in 25 s from one ``POST /enroll``
(issue 13). So every fetch here:

- streams the body and stops at a byte cap for its kind (``max_bytes``: metadata 64 KiB, DID
  documents and records 256 KiB by default, ``[identity]`` config), counted after content decoding so
  a gzip bomb is cut at the cap too; a larger ``Content-Length`` is refused before reading;
- fails as one ``FetchError`` whose message names what was fetched and why (callers turn it into
  their own error: ``DidNotFound``, ``OAuthError``, an attestation ``error``);
- runs under the caller's overall deadline for the operation (``trio.fail_after`` around a sign-in,
  a DID resolution, a record read): a server dripping one byte per read timeout cannot hold it.

The byte caps do not replace the outbound address policy (which addresses may be connected to); that
lives with the client factory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

KiB = 1024
METADATA_BYTES = 64 * KiB
DOCUMENT_BYTES = 256 * KiB


class FetchError(Exception):
    """The fetch failed (unreachable, refused, too large); the message says which and where."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """A response read within its cap: the parts of ``httpx.Response`` the callers use."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not (nesting too deep for the parser included)."""
        try:
            return json.loads(self.content)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


async def fetch(client: httpx.AsyncClient, method: str, url: str, *, max_bytes: int, what: str,
                **kw: Any) -> Fetched:
    """One request; the body read up to ``max_bytes`` (FetchError beyond)."""
    try:
        async with client.stream(method, url, **kw) as resp:
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"the {what} at {url} is {declared} bytes, more than the {max_bytes} allowed")
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"the {what} at {url} is larger than the {max_bytes} bytes allowed")
            return Fetched(resp.status_code, resp.headers, bytes(body))
    except httpx.HTTPError as exc:
        raise FetchError(f"could not fetch the {what} from {url} ({type(exc).__name__})") from None


async def get_json(client: httpx.AsyncClient, url: str, *, max_bytes: int, what: str,
                   **kw: Any) -> tuple[int, Any]:
    """GET, capped: (status, JSON body or None when the body is not JSON)."""
    resp = await fetch(client, "GET", url, max_bytes=max_bytes, what=what, **kw)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, None


async def get_object(client: httpx.AsyncClient, url: str, *, max_bytes: int, what: str,
                     **kw: Any) -> dict[str, Any]:
    """GET, capped, a document that must be a JSON object served with HTTP 200 (a DID document, OAuth
    metadata); FetchError names what is wrong otherwise."""
    status, body = await get_json(client, url, max_bytes=max_bytes, what=what, **kw)
    if status != 200:
        raise FetchError(f"no {what} at {url} (HTTP {status})")
    if body is None:
        raise FetchError(f"the {what} at {url} is not JSON")
    if not isinstance(body, dict):
        raise FetchError(f"the {what} at {url} is not a JSON object")
    return body


__all__ = ["DOCUMENT_BYTES", "METADATA_BYTES", "FetchError", "Fetched", "fetch", "get_json", "get_object"]
