"""Record framing: the byte format of everything in a segment file.

    header v2  = magic E5 "ASQ" (4) | type (1) | payload length (4, BE) | MAC (16) over type+length+payload
    header v1  = magic E5 "ASP" (4) | type (1) | payload length (4, BE) | CRC32 (4, BE)   (read only)
    MESSAGE    payload = env_len (4, BE) | envelope JSON | raw message | first recipient id (8, BE)
    TRANSITION payload = JSON [queue_id, rcpt_id, state|null, attempts, next_attempt_at, reply, info]

The MAC is keyed BLAKE2b-128 under the spool's own random key (``record.key`` in the spool
directory, 0600, never leaves it): a message body is bytes a member wrote, and a CRC is something
anyone can compute, so a body that embeds a well-formed record would pass a CRC check after a torn
write made recovery look for the next record. Without the key no byte sequence a member can
write verifies as a record. v1 (CRC-only) records are still read, but only as an unbroken run from
the start of a segment an older version wrote (``spool.recovery``); they are never written.

The first id trails the MESSAGE payload on purpose: the MAC over the bulky part is computed by
the accepting task before the id exists, and the committer (which allocates ids in log order)
only has to extend a copy of it over 8 bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from spool.message import Envelope
from spool.transition import State, Transition

# A high first byte: unlikely at a line start of 7-bit mail text, a cheap target for resync.
MAGIC = b"\xe5ASQ"  # v2, keyed MAC
LEGACY_MAGIC = b"\xe5ASP"  # v1, CRC32 only (read, never written)
MAC_SIZE = 16
HEADER = struct.Struct(f">4sBI{MAC_SIZE}s")
HEADER_SIZE = HEADER.size  # 25
LEGACY_HEADER = struct.Struct(">4sBII")
LEGACY_HEADER_SIZE = LEGACY_HEADER.size  # 13
KEY_FILE = "record.key"
TYPE_LEN = struct.Struct(">BI")
ENV_LEN = struct.Struct(">I")
FIRST_ID = struct.Struct(">Q")

MESSAGE = 1
TRANSITION = 2
TYPES = frozenset({MESSAGE, TRANSITION})

# Records are written whole; one bigger than this is never valid (the SMTP limit is 25 MiB).
MAX_PAYLOAD = 1 << 30
# Bytes of a MESSAGE payload around the raw message: env_len prefix and first id.
MESSAGE_OVERHEAD = ENV_LEN.size + FIRST_ID.size


class Undecodable(ValueError):
    """A record whose CRC verifies but whose payload does not parse (a bug, never a torn write)."""


class RecordKey:
    """The spool's MAC key (32 random bytes in ``<spool>/record.key``)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a record key is 32 bytes")
        self._key = key

    @classmethod
    def load(cls, directory: Path, *, create: bool) -> RecordKey | None:
        """The directory's key; created durably (0600, O_EXCL) when ``create``; None when absent."""
        path = Path(directory) / KEY_FILE
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            if not create:
                return None
        key = os.urandom(32)
        tmp = path.with_name(KEY_FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return cls(key)

    def start(self, rtype: int, length: int) -> hashlib.blake2b:
        """A running MAC already over type and length; feed it the payload, left to right."""
        h = hashlib.blake2b(key=self._key, digest_size=MAC_SIZE)
        h.update(TYPE_LEN.pack(rtype, length))
        return h


def crc_start(rtype: int, length: int) -> int:
    return zlib.crc32(TYPE_LEN.pack(rtype, length))


def frame(key: RecordKey, rtype: int, payload: bytes) -> bytes:
    h = key.start(rtype, len(payload))
    h.update(payload)
    return HEADER.pack(MAGIC, rtype, len(payload), h.digest()) + payload


# -- MESSAGE ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class MessageDraft:
    """A MESSAGE record with everything but its id; ``mac`` covers type, length, prefix and data."""

    envelope: Envelope
    prefix: bytes  # env_len + envelope JSON
    data: bytes
    mac: hashlib.blake2b

    @property
    def payload_len(self) -> int:
        return len(self.prefix) + len(self.data) + FIRST_ID.size

    @property
    def size(self) -> int:
        return HEADER_SIZE + self.payload_len

    @property
    def nrcpts(self) -> int:
        return len(self.envelope.rcpts)


def envelope_json(env: Envelope) -> bytes:
    # ensure_ascii keeps lone surrogates (undecodable SMTP bytes) representable and round-tripping.
    return json.dumps(
        [env.mail_from, list(env.rcpts), env.did, dict(env.attrs), env.arrival], separators=(",", ":")
    ).encode()


def message_prefix(env: Envelope) -> bytes:
    blob = envelope_json(env)
    return ENV_LEN.pack(len(blob)) + blob


def draft_message(key: RecordKey, env: Envelope, data: bytes) -> MessageDraft:
    prefix = message_prefix(env)
    h = key.start(MESSAGE, len(prefix) + len(data) + FIRST_ID.size)
    h.update(prefix)
    h.update(data)
    return MessageDraft(env, prefix, data, h)


def seal_message(d: MessageDraft, first_id: int) -> tuple[bytes, bytes]:
    """(header, id suffix) for the draft once its id is known."""
    suffix = FIRST_ID.pack(first_id)
    h = d.mac.copy()
    h.update(suffix)
    return HEADER.pack(MAGIC, MESSAGE, d.payload_len, h.digest()), suffix


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A decoded MESSAGE record: everything but the raw bytes, which stay on disk."""

    first_id: int
    envelope: Envelope
    data_offset: int  # relative to the start of the payload
    data_len: int


def decode_message(payload: memoryview) -> MessageRef:
    n = len(payload)
    if n < MESSAGE_OVERHEAD:
        raise Undecodable("short MESSAGE payload")
    (env_len,) = ENV_LEN.unpack_from(payload, 0)
    if env_len > n - MESSAGE_OVERHEAD:
        raise Undecodable("envelope length out of range")
    try:
        blob = bytes(payload[ENV_LEN.size : ENV_LEN.size + env_len])
        mail_from, rcpts, did, attrs, arrival = json.loads(blob)
        env = Envelope(
            mail_from=str(mail_from),
            rcpts=tuple(str(r) for r in rcpts),
            did=str(did),
            attrs={str(k): str(v) for k, v in attrs.items()},
            arrival=float(arrival),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise Undecodable(f"bad envelope: {exc}") from None
    if not env.rcpts:
        raise Undecodable("message without recipients")
    (first_id,) = FIRST_ID.unpack_from(payload, n - FIRST_ID.size)
    start = ENV_LEN.size + env_len
    return MessageRef(first_id, env, start, n - FIRST_ID.size - start)


# -- TRANSITION ------------------------------------------------------------------------------------


def encode_transition(key: RecordKey, t: Transition) -> bytes:
    state = None if t.state is None else t.state.value
    body = [t.queue_id, t.rcpt_id, state, t.attempts, t.next_attempt_at, t.reply, t.info]
    return frame(key, TRANSITION, json.dumps(body, separators=(",", ":")).encode())


def decode_transition(payload: memoryview) -> Transition:
    try:
        qid, rid, state, attempts, nxt, reply, info = json.loads(bytes(payload))
        return Transition(
            queue_id=int(qid),
            rcpt_id=int(rid),
            state=None if state is None else State(state),
            attempts=int(attempts),
            next_attempt_at=None if nxt is None else float(nxt),
            reply=str(reply),
            info=str(info),
        )
    except (ValueError, TypeError) as exc:
        raise Undecodable(f"bad transition: {exc}") from None


# -- scanning --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """A record header that parsed: a known magic and type and a plausible length."""

    version: int  # 2 (MAC) or 1 (legacy CRC)
    rtype: int
    length: int  # payload bytes
    size: int  # header bytes

    def end(self, pos: int) -> int:
        return pos + self.size + self.length


def header_at(buf: memoryview, pos: int, *, legacy: bool) -> Header | None:
    """The header at ``pos`` if it parses (v1 only when ``legacy``), else None. Checks no MAC."""
    left = len(buf) - pos
    if left < LEGACY_HEADER_SIZE:
        return None
    magic = bytes(buf[pos : pos + 4])
    if magic == MAGIC and left >= HEADER_SIZE:
        _, rtype, length, _ = HEADER.unpack_from(buf, pos)
        version, size = 2, HEADER_SIZE
    elif magic == LEGACY_MAGIC and legacy:
        _, rtype, length, _ = LEGACY_HEADER.unpack_from(buf, pos)
        version, size = 1, LEGACY_HEADER_SIZE
    else:
        return None
    if rtype not in TYPES or length > MAX_PAYLOAD:
        return None
    return Header(version, rtype, length, size)


def verifies(key: RecordKey | None, buf: memoryview, pos: int, h: Header) -> bool:
    """Whether the whole record at ``pos`` (inside ``buf``) carries a good MAC (v2) or CRC (v1)."""
    start = pos + h.size
    if h.end(pos) > len(buf):
        return False
    payload = buf[start : start + h.length]
    if h.version == 1:
        _, _, _, crc = LEGACY_HEADER.unpack_from(buf, pos)
        return bool(zlib.crc32(payload, crc_start(h.rtype, h.length)) == crc)
    if key is None:
        return False
    _, _, _, mac = HEADER.unpack_from(buf, pos)
    m = key.start(h.rtype, h.length)
    m.update(payload)
    return hmac.compare_digest(m.digest(), mac)


def valid_at(key: RecordKey | None, buf: memoryview, pos: int) -> int:
    """Payload length of the MAC-verified v2 record starting at ``pos``, or -1 (resync never trusts v1)."""
    h = header_at(buf, pos, legacy=False)
    if h is None or not verifies(key, buf, pos, h):
        return -1
    return h.length
