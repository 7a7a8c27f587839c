"""Labeler key, signatures and frames, checked with the atproto SDK (independent implementation)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import libipld
from atproto_client.models.com.atproto.label.defs import Label
from atproto_core.cbor import decode_dag_multi
from atproto_core.did_doc import DidDocument
from atproto_crypto.did import get_did_key, parse_multikey
from atproto_crypto.verify import verify_signature
from atproto_firehose import parse_subscribe_labels_message
from atproto_subscription.frames import MessageFrame, parse_frame, parse_frame_header

from relay.labeler.keys import LabelerKey, b58encode, default_did, did_document
from relay.labeler.labels import info_frame, label_json, label_wire, labels_frame, sign_label, unsigned_bytes

SRC = "did:web:labeler.test"
MEMBER = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"


def sdk_verify(doc: dict, label: dict) -> bool:
    """Verify a wire label (sig as bytes) against the document's #atproto_label key, with the SDK."""
    parsed = DidDocument.from_dict(doc)
    method = next(m for m in parsed.verification_method or [] if m.id.endswith("#atproto_label"))
    did_key = get_did_key(method.type, method.public_key_multibase)
    assert did_key is not None
    unsigned = {k: v for k, v in label.items() if k != "sig"}
    return verify_signature(did_key, libipld.encode_dag_cbor(unsigned), label["sig"])


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "labeler" / "key.pem"
    key = LabelerKey.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert LabelerKey.load_or_create(path).multibase == key.multibase


def test_multibase_parses_with_the_sdk() -> None:
    key = LabelerKey.generate()
    multikey = parse_multikey(key.multibase)
    assert multikey.jwt_alg == "ES256K"
    assert key.multibase.startswith("zQ3s")  # secp256k1 multikeys always start so
    assert b58encode(b"\0\0\1") == "112"


def test_labels_verify_with_the_sdk_including_negations() -> None:
    key = LabelerKey.generate()
    doc = did_document(SRC, key, "https://labeler.test")
    for neg in (False, True):
        for _ in range(20):  # many signatures: every one low-S, every one valid
            row = sign_label(key, src=SRC, uri=MEMBER, val="relay-member", neg=neg)
            wire = label_wire(row)
            assert ("neg" in wire) is neg
            assert sdk_verify(doc, wire)
            s = int.from_bytes(row.sig[32:], "big")
            assert len(row.sig) == 64 and s <= 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2
    tampered = label_wire(sign_label(key, src=SRC, uri=MEMBER, val="relay-member"))
    tampered["val"] = "verified-mail-operator"
    assert not sdk_verify(doc, tampered)


def test_json_form_round_trips_through_the_sdk_model() -> None:
    key = LabelerKey.generate()
    row = sign_label(key, src=SRC, uri=MEMBER, val="verified-mail-operator", exp="2030-01-01T00:00:00.000Z")
    js = label_json(row)
    raw = js["sig"]["$bytes"]
    sig = base64.b64decode(raw + "=" * (-len(raw) % 4))
    assert sig == row.sig and js["ver"] == 1 and js["exp"] == "2030-01-01T00:00:00.000Z"
    model = Label(**{k: v for k, v in js.items() if k != "sig"}, sig=sig)
    assert model.src == SRC and model.uri == MEMBER and model.neg is None
    assert unsigned_bytes(row) == libipld.encode_dag_cbor({k: v for k, v in js.items() if k != "sig"})


def test_frames_parse_with_the_sdk() -> None:
    key = LabelerKey.generate()
    row = sign_label(key, src=SRC, uri=MEMBER, val="relay-member", neg=True)
    header, body = decode_dag_multi(labels_frame(7, [row]))
    frame = parse_frame(parse_frame_header(header), body)
    assert isinstance(frame, MessageFrame) and frame.type == "#labels"
    message = parse_subscribe_labels_message(frame)
    assert message.seq == 7 and message.labels[0].neg is True and message.labels[0].sig == row.sig
    header, body = decode_dag_multi(info_frame("OutdatedCursor"))
    assert header == {"op": 1, "t": "#info"} and body == {"name": "OutdatedCursor"}


def test_default_did() -> None:
    assert default_did("https://relay.example.com") == "did:web:relay.example.com"
    assert default_did("http://127.0.0.1:8080/") == "did:web:127.0.0.1%3A8080"
