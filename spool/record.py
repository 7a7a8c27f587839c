"""Record framing: the byte format of everything in a segment file.

    header  = magic (4) | type (1) | payload length (4, BE) | CRC32 (4, BE) over type+length+payload
    MESSAGE    payload = env_len (4, BE) | envelope JSON | raw message | first recipient id (8, BE)
    TRANSITION payload = JSON [queue_id, rcpt_id, state|null, attempts, next_attempt_at, reply, info]

The first id trails the MESSAGE payload on purpose: the CRC over the bulky part is computed by
the accepting task before the id exists, and the committer (which allocates ids in log order)
only has to extend it over 8 bytes (zlib.crc32 continues a running CRC left to right).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

from spool.message import Envelope
from spool.transition import State, Transition

# A high first byte: unlikely at a line start of 7-bit mail text, a cheap target for resync.
MAGIC = b"\xe5ASP"
HEADER = struct.Struct(">4sBII")
HEADER_SIZE = HEADER.size  # 13
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


def crc_start(rtype: int, length: int) -> int:
    return zlib.crc32(TYPE_LEN.pack(rtype, length))


def frame(rtype: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, crc_start(rtype, len(payload)))
    return HEADER.pack(MAGIC, rtype, len(payload), crc) + payload


# -- MESSAGE ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class MessageDraft:
    """A MESSAGE record with everything but its id; ``crc`` covers type, length, prefix and data."""

    envelope: Envelope
    prefix: bytes  # env_len + envelope JSON
    data: bytes
    crc: int

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


def draft_message(env: Envelope, data: bytes) -> MessageDraft:
    prefix = message_prefix(env)
    head = crc_start(MESSAGE, len(prefix) + len(data) + FIRST_ID.size)
    return MessageDraft(env, prefix, data, zlib.crc32(data, zlib.crc32(prefix, head)))


def seal_message(d: MessageDraft, first_id: int) -> tuple[bytes, bytes]:
    """(header, id suffix) for the draft once its id is known."""
    suffix = FIRST_ID.pack(first_id)
    return HEADER.pack(MAGIC, MESSAGE, d.payload_len, zlib.crc32(suffix, d.crc)), suffix


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


def encode_transition(t: Transition) -> bytes:
    state = None if t.state is None else t.state.value
    body = [t.queue_id, t.rcpt_id, state, t.attempts, t.next_attempt_at, t.reply, t.info]
    return frame(TRANSITION, json.dumps(body, separators=(",", ":")).encode())


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


def valid_at(buf: memoryview, pos: int) -> int:
    """Payload length of the CRC-verified record starting at ``pos``, or -1."""
    end = len(buf)
    if end - pos < HEADER_SIZE:
        return -1
    magic: bytes
    rtype: int
    length: int
    crc: int
    magic, rtype, length, crc = HEADER.unpack_from(buf, pos)
    if magic != MAGIC or rtype not in TYPES or length > end - pos - HEADER_SIZE or length > MAX_PAYLOAD:
        return -1
    start = pos + HEADER_SIZE
    if zlib.crc32(buf[start : start + length], crc_start(rtype, length)) != crc:
        return -1
    return length
