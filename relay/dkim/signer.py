"""DKIM signing, several signatures per message in one pass (RFC 6376, RFC 8463, DESIGN §5).

Every outbound message carries three signatures: the member domain's RSA-2048 (``<sel>r``) and
Ed25519 (``<sel>e``) keys and the operator domain's key. The work that does not depend on the key
is done once per message: line-end normalization, the header split, the body hash (``bh=``), and
the hash state over the signed header fields (every signature signs the same ``h=`` list). Per key
only the DKIM-Signature field itself is hashed and the private-key operation runs in OpenSSL
through ``cryptography``; keys are parsed once into ``SigningKey`` objects, never per message.

Choices (each one is a tag the receiver sees):
  c=relaxed/relaxed  survives re-folding and whitespace changes in transit (RFC 6376 §3.4).
  no l=              a body length limit lets anyone append content under a valid signature (§8.2).
  h= oversigned      each name in ``headers_to_sign`` is listed once per field present plus once
                     more, and a name in ``guard`` that is absent is listed once: a verifier then
                     hashes "no such field" for the extra entry, so a field added later (a second
                     From, a Reply-To, a List-Unsubscribe) breaks every signature (§5.4.2, §8.15).
  t=                 signing time; no x= (expiry is the receiver's policy).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from relay.dkim.canon import normalize, relaxed_body, relaxed_header, split_message
from relay.mail.dkimkeys import DomainKeys, load_ed25519_private, load_rsa_private

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

# Signed when present, each occurrence plus one oversign entry (see the module docstring).
DEFAULT_HEADERS: tuple[str, ...] = (
    "From", "Subject", "To", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post",
    "Feedback-ID", "Reply-To", "Cc", "MIME-Version", "Content-Type",
)
# Fields nobody may add to a signed message: when absent they still get one (guard) entry in h=.
# All of the defaults: each changes who the mail is from or to, what it says, how it is rendered
# (adding a multipart Content-Type re-reads the body) or what an unsubscribe click does. The relay
# always adds Date, Message-ID and Feedback-ID, so for those the guard never shows.
MUST_NOT_ADD: frozenset[str] = frozenset(name.lower() for name in DEFAULT_HEADERS)

MAX_LINE = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters, excluding the CRLF
_FOLD = "\r\n\t"
_HEAD_SKIP = len("DKIM-Signature: ")  # the name, colon and the SP before v=1
_RSA_MIN_BITS = 1024  # RFC 8301 §3.2: verifiers MUST NOT accept shorter keys
# RFC 6376 §3.5 d=/s=: dot-separated sub-domains (A-labels for IDNs). Checked because the values
# are written into a header field as they are; anything else could inject tags or lines.
_LABELS = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
_PKCS1 = padding.PKCS1v15()
_PREHASHED_SHA256 = utils.Prehashed(hashes.SHA256())


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One DKIM signing identity: ``d=domain``, ``s=selector``, ``a=algorithm``, and the parsed
    private key (``rsa.RSAPrivateKey`` for rsa-sha256, ``ed25519.Ed25519PrivateKey`` for
    ed25519-sha256). Build it once per key and keep it; see ``domain_signing_keys``."""

    domain: str
    selector: str
    algorithm: Algorithm
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = field(repr=False)
    # "DKIM-Signature: v=1; a=...; c=...; d=...; s=...;" folded: the same for every message.
    head: str = field(init=False, repr=False, compare=False)
    head_len: int = field(init=False, repr=False, compare=False)  # length of the head's last line

    def __post_init__(self) -> None:
        for tag, value in (("domain", self.domain), ("selector", self.selector)):
            if not _LABELS.fullmatch(value):
                raise ValueError(f"DKIM {tag} {value!r} is not a dot-separated list of DNS labels")
        if self.algorithm == "rsa-sha256":
            if not isinstance(self.key, rsa.RSAPrivateKey):
                raise TypeError("rsa-sha256 needs an RSA private key")
            if self.key.key_size < _RSA_MIN_BITS:
                raise ValueError(f"RSA key of {self.key.key_size} bits: DKIM needs >= {_RSA_MIN_BITS}")
        elif self.algorithm == "ed25519-sha256":
            if not isinstance(self.key, ed25519.Ed25519PrivateKey):
                raise TypeError("ed25519-sha256 needs an Ed25519 private key")
        else:
            raise ValueError(f"unknown DKIM algorithm {self.algorithm!r}")
        tags = ["v=1;", f"a={self.algorithm};", "c=relaxed/relaxed;", f"d={self.domain};", f"s={self.selector};"]
        head, head_len = _fold(tags, " ", "DKIM-Signature:", len("DKIM-Signature:"))
        object.__setattr__(self, "head", head)
        object.__setattr__(self, "head_len", head_len)

    def sign_digest(self, digest: bytes) -> bytes:
        """The b= signature over the SHA-256 of the canonicalized header data.

        RSA: EMSA-PKCS1-v1_5 with SHA-256 (RFC 6376 §3.3.1); the digest is passed as pre-hashed.
        Ed25519: PureEdDSA over the 32-byte SHA-256 digest itself (RFC 8463 §3).
        """
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, _PKCS1, _PREHASHED_SHA256)
        return self.key.sign(digest)


def domain_signing_keys(keys: DomainKeys) -> tuple[SigningKey, SigningKey]:
    """(RSA ``<sel>r``, Ed25519 ``<sel>e``) for an enrolled member domain, parsed once."""
    return (
        SigningKey(keys.domain, keys.rsa_selector, "rsa-sha256", load_rsa_private(keys.rsa_private_pem)),
        SigningKey(
            keys.domain, keys.ed25519_selector, "ed25519-sha256", load_ed25519_private(keys.ed25519_private_raw)
        ),
    )


def body_hash(body: bytes) -> str:
    """``bh=``: base64 SHA-256 of the relaxed-canonical body (RFC 6376 §3.7), no l= limit."""
    return base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")


def sign(
    message: bytes,
    keys: Sequence[SigningKey],
    *,
    headers_to_sign: Sequence[str] = DEFAULT_HEADERS,
    guard: Collection[str] = MUST_NOT_ADD,
    now: float | None = None,
) -> bytes:
    """The message with one ``DKIM-Signature`` field per key prepended, in the order of ``keys``
    (the first key's signature is the topmost field: verifiers that look at one signature only,
    such as dkimpy's ``dkim.verify``, see the caller's first choice).

    The returned message is the input with CRLF line ends (bare LF is converted and a missing final
    CRLF added, see ``canon.normalize``): send these bytes, not the original. ``headers_to_sign`` and
    ``guard`` names are matched case-insensitively. ``now`` (seconds since the epoch) sets t=;
    default: the current time.
    """
    message = normalize(message)
    if not keys:
        return message
    fields, body = split_message(message)

    by_name: dict[bytes, list[bytes]] = {}
    for raw_name, value in fields:
        by_name.setdefault(raw_name.rstrip(b" \t").lower(), []).append(value)
    if guard is not MUST_NOT_ADD:
        guard = frozenset(g.lower() for g in guard)

    # The h= list and the hash of the fields it selects, the same for every key: the state is
    # copied per signature. For each name present n times: n entries selecting the fields from the
    # bottom up (RFC 6376 §5.4.2), then one more that selects nothing, so a field of that name added
    # later makes the verifier hash it where we hashed nothing (§8.15). An absent name in ``guard``
    # gets that one entry alone.
    names: list[str] = []
    header_hash = hashlib.sha256()
    for name, name_bytes in _lowercase(tuple(headers_to_sign)):
        found = by_name.get(name_bytes)
        if found:
            names.extend([name] * (len(found) + 1))
            for value in reversed(found):
                header_hash.update(relaxed_header(name_bytes, value))
        elif name in guard or name == "from":  # §5.4: From is always signed, even as a guard
            names.append(name)

    stamp_bh = (f"t={int(time.time() if now is None else now)};", f"bh={body_hash(body)};")
    tail = f"{_FOLD}{_h_tag(tuple(names))}{_FOLD}b="
    out: list[bytes] = []
    for key in keys:
        head = _fold(stamp_bh, " ", key.head, key.head_len)[0] + tail
        state = header_hash.copy()
        # §3.7: the DKIM-Signature field is hashed last, relaxed, b= empty, without its final CRLF.
        # The relaxed form of what _fold writes: each fold (CRLF TAB) unfolds to one SP; there are
        # no other WSP runs and none after "b=" (test_signer checks the signatures with relaxed_header).
        state.update(b"dkim-signature:" + head[_HEAD_SKIP:].replace(_FOLD, " ").encode("ascii"))
        b64 = base64.b64encode(key.sign_digest(state.digest())).decode("ascii")
        out.append(f"{head}{_fold_b64(b64)}\r\n".encode("ascii"))
    out.append(message)
    return b"".join(out)


@functools.lru_cache(maxsize=64)
def _lowercase(headers: tuple[str, ...]) -> tuple[tuple[str, bytes], ...]:
    """``headers_to_sign`` lowercased (str and bytes), first mention of each name only."""
    seen: dict[str, bytes] = {}
    for name in headers:
        seen.setdefault(name.lower(), name.lower().encode("ascii"))
    if "from" not in seen:
        raise ValueError("headers_to_sign must include From (RFC 6376 §5.4)")
    return tuple(seen.items())


@functools.lru_cache(maxsize=256)
def _h_tag(names: tuple[str, ...]) -> str:
    """ "h=a:b:c;" folded after colons (FWS may surround ":", §3.5), starting a line after a TAB.
    Cached: most messages through the relay carry the same set of fields."""
    pieces = [name + ":" for name in names]
    pieces[-1] = names[-1] + ";"  # never empty: From is always listed
    return _fold(pieces, "", "h=", 1 + 2)[0]


def _fold(pieces: Sequence[str], sep: str, start: str, line_len: int) -> tuple[str, int]:
    """``start`` (whose last line is ``line_len`` characters long) then the pieces joined by ``sep``,
    breaking lines with CRLF TAB instead of ``sep`` before a piece that would pass MAX_LINE; returns
    the text and the length of its last line. A piece longer than a line stays whole (RFC 5322
    allows lines of up to 998 characters)."""
    parts = [start]
    for piece in pieces:
        if line_len + len(sep) + len(piece) > MAX_LINE and line_len > 1:
            parts.append(_FOLD)
            line_len = 1  # the TAB
        else:
            parts.append(sep)
            line_len += len(sep)
        parts.append(piece)
        line_len += len(piece)
    return "".join(parts), line_len


def _fold_b64(b64: str) -> str:
    """The b= value after TAB "b=", then TAB-led lines of MAX_LINE (base64 may take FWS, §3.5)."""
    first = MAX_LINE - len("\tb=")
    width = MAX_LINE - 1
    return _FOLD.join([b64[:first], *(b64[i : i + width] for i in range(first, len(b64), width))])
