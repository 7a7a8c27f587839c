"""Spool records cannot be forged from message content (issue 15): a body that embeds well-formed
records never becomes one, whatever damage makes recovery look inside it; old CRC segments still read."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spool import Envelope, SpoolLog
from spool.record import LEGACY_MAGIC, MESSAGE, TYPE_LEN, RecordKey, draft_message, envelope_json, seal_message
from tests.spool.helpers import envelope, segments

VICTIM = "did:plc:victimvvvvvvvvvvvvvvvvvv"


def legacy_record(env: Envelope, data: bytes, first_id: int) -> bytes:
    """A v1 record exactly as the CRC-only format wrote it."""
    blob = envelope_json(env)
    payload = struct.pack(">I", len(blob)) + blob + data + struct.pack(">Q", first_id)
    crc = zlib.crc32(payload, zlib.crc32(TYPE_LEN.pack(MESSAGE, len(payload))))
    return struct.pack(">4sBII", LEGACY_MAGIC, MESSAGE, len(payload), crc) + payload


def forged_body() -> bytes:
    """What a member could submit: a v1 record (valid CRC) and a v2 record under some other key,
    each queueing mail from another DID to an address of the member's choosing."""
    env = Envelope(mail_from="ceo@victim.example", rcpts=("target@evil.example",), did=VICTIM, attrs={},
                   arrival=1.0)
    v2 = draft_message(RecordKey(os.urandom(32)), env, b"Subject: forged\r\n\r\nhi\r\n")
    header, suffix = seal_message(v2, 999_000)
    return (b"Subject: innocent\r\n\r\n" + legacy_record(env, b"Subject: forged\r\n\r\nhi\r\n", 999_100)
            + header + v2.prefix + v2.data + suffix + b"\r\nbye\r\n")


def test_a_body_that_embeds_records_never_becomes_one(tmp_path: Path) -> None:
    for damage in ("magic", "mac"):
        directory = tmp_path / damage
        body = forged_body()
        with SpoolLog.open(directory) as log:
            before = log.append(envelope(1, tag="a"), b"first")
            forged = log.append(envelope(1, tag="b"), body)
            after = log.append(envelope(1, tag="c"), b"last")
        seg = segments(directory)[-1]
        blob = bytearray(seg.read_bytes())
        at = blob.index(body) + 40  # inside the forged message's record, before the embedded ones
        start = blob.rindex(b"\xe5ASQ", 0, at)
        if damage == "magic":
            blob[start] ^= 0xFF  # the header no longer parses: recovery has to resync past it
        else:
            blob[at] ^= 0x01  # the header parses, its MAC fails: the claimed span is skipped whole
        seg.write_bytes(bytes(blob))
        with SpoolLog.open(directory) as log:
            live = {m.queue_id: m.envelope for m in log.live()}
            assert set(live) == {before.queue_id, after.queue_id}, damage
            assert all(env.did != VICTIM for env in live.values())
            assert log.read_data(after.queue_id) == b"last"
            [q] = log.report.quarantined
            assert q.offset == start and q.path is not None  # kept for the operator, not dropped
        assert forged.queue_id not in live


def test_legacy_crc_segments_are_still_read(tmp_path: Path) -> None:
    """A segment an older version wrote (v1 records from offset 0) recovers; new records are v2."""
    tmp_path.mkdir(exist_ok=True)
    env1, env2 = envelope(2, tag="old1"), envelope(1, tag="old2")
    (tmp_path / "seg-00000000000000000001.log").write_bytes(
        legacy_record(env1, b"old one", 1) + legacy_record(env2, b"old two", 3))
    with SpoolLog.open(tmp_path) as log:
        assert [(m.queue_id, log.read_data(m.queue_id)) for m in log.live()] == [(1, b"old one"), (3, b"old two")]
        new = log.append(envelope(1, tag="new"), b"new one")
    raw = segments(tmp_path)[-1].read_bytes()
    assert b"\xe5ASQ" in raw  # the new record carries a MAC
    with SpoolLog.open(tmp_path) as log:
        assert [m.queue_id for m in log.live()] == [1, 3, new.queue_id]
        assert log.report.quarantined == ()
    assert (tmp_path / "record.key").stat().st_mode & 0o777 == 0o600


def test_legacy_records_after_a_resync_are_not_trusted(tmp_path: Path) -> None:
    """Past damage, a v1 record (CRC only: anyone can compute one) is never picked up."""
    tmp_path.mkdir(exist_ok=True)
    good = legacy_record(envelope(1, tag="ok"), b"ok", 1)
    planted = legacy_record(Envelope(mail_from="a@victim.example", rcpts=("t@evil.example",), did=VICTIM,
                                     attrs={}, arrival=1.0), b"forged", 2)
    (tmp_path / "seg-00000000000000000001.log").write_bytes(good + b"garbage bytes" + planted)
    with SpoolLog.open(tmp_path) as log:
        assert [m.envelope.did for m in log.live()] == [envelope(1).did]
        assert log.report.truncated_bytes == len(b"garbage bytes") + len(planted)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damage_at=st.floats(0.0, 1.0), xor=st.integers(1, 255), cut=st.booleans())
def test_no_damage_anywhere_turns_member_bytes_into_records(damage_at: float, xor: int, cut: bool) -> None:
    """Whatever single byte is damaged (or wherever the log is cut), every message recovered is one
    that was appended, and nothing planted in a body is ever queued."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        bodies = [b"plain", forged_body(), b"x" * 50 + forged_body(), b"last"]
        with SpoolLog.open(d) as log:
            appended = {log.append(envelope(1, tag=str(i)), body).queue_id: body for i, body in enumerate(bodies)}
        seg = segments(d)[-1]
        blob = bytearray(seg.read_bytes())
        pos = min(int(len(blob) * damage_at), len(blob) - 1)
        if cut:
            del blob[pos:]
        else:
            blob[pos] ^= xor
        seg.write_bytes(bytes(blob))
        with SpoolLog.open(d) as log:
            for m in log.live():
                assert m.envelope.did != VICTIM
                assert log.read_data(m.queue_id) == appended[m.queue_id]
