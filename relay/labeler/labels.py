"""atproto labels: signing, the XRPC JSON form and the subscribeLabels event-stream frames.

Signing follows the atproto label spec and the reference implementation (ozone ``signLabel``): the
label without ``sig`` holds ``ver`` (1), ``src``, ``uri``, ``val``, ``cts``, plus ``neg`` ONLY when
true and ``exp`` only when set (no ``cid``: our labels are account labels); that object is encoded as
DAG-CBOR (libipld: canonical key order), and the bytes are signed (SHA-256, ECDSA secp256k1, low-S,
64-byte r||s). The published label carries exactly those fields plus ``sig``, so any verifier that
drops ``sig`` and re-encodes gets the signed bytes back.

Label values (DESIGN §3) and subjects: both labels are account labels, ``uri`` = the member's DID
(no ``cid``). An account label is what applications attach to the sender everywhere (profile,
posts, a mail client looking up the From domain's DID); a label on the attestation record's
at:// URI would describe the record, not the sender, and would vanish from view with the record.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Sequence
from typing import Any, Final, Literal

import libipld

from relay.labeler.keys import LabelerKey
from relay.store.rows import LabelRow

__all__ = [
    "CLEAN_SENDER",
    "LABEL_VALUES",
    "RELAY_MEMBER",
    "VERIFIED_MAIL_OPERATOR",
    "error_frame",
    "info_frame",
    "label_json",
    "label_wire",
    "labels_frame",
    "now_iso",
    "sign_label",
    "unsigned_bytes",
]

VERIFIED_MAIL_OPERATOR: Final = "verified-mail-operator"
RELAY_MEMBER: Final = "relay-member"
CLEAN_SENDER: Final = "clean-sender"
LabelValue = Literal["verified-mail-operator", "relay-member", "clean-sender"]
LABEL_VALUES: tuple[LabelValue, ...] = (VERIFIED_MAIL_OPERATOR, RELAY_MEMBER, CLEAN_SENDER)


def now_iso(now: datetime.datetime | None = None) -> str:
    """``2025-01-02T03:04:05.678Z``: the datetime form atproto uses (millisecond UTC)."""
    now = now or datetime.datetime.now(datetime.UTC)
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _unsigned(src: str, uri: str, val: str, neg: bool, cts: str, exp: str | None) -> dict[str, Any]:
    label: dict[str, Any] = {"ver": 1, "src": src, "uri": uri, "val": val, "cts": cts}
    if neg:
        label["neg"] = True
    if exp is not None:
        label["exp"] = exp
    return label


def unsigned_bytes(row: LabelRow) -> bytes:
    """The DAG-CBOR bytes a label's signature covers."""
    return bytes(libipld.encode_dag_cbor(_unsigned(row.src, row.uri, row.val, row.neg, row.cts, row.exp)))


def sign_label(
    key: LabelerKey, *, src: str, uri: str, val: str, neg: bool = False, cts: str | None = None,
    exp: str | None = None,
) -> LabelRow:
    """A signed label, not yet stored (``seq`` 0)."""
    row = LabelRow(src=src, uri=uri, val=val, neg=neg, cts=cts or now_iso(), sig=b"", exp=exp)
    sig = key.sign(unsigned_bytes(row))
    return LabelRow(src=row.src, uri=row.uri, val=row.val, neg=row.neg, cts=row.cts, sig=sig, exp=row.exp)


def label_wire(row: LabelRow) -> dict[str, Any]:
    """The label as a DAG-CBOR value (``sig`` as bytes) for subscribeLabels."""
    label = _unsigned(row.src, row.uri, row.val, row.neg, row.cts, row.exp)
    label["sig"] = row.sig
    return label


def label_json(row: LabelRow) -> dict[str, Any]:
    """The label as JSON (``com.atproto.label.defs#label``): ``sig`` as ``{"$bytes": base64}``
    (standard alphabet, unpadded, as the reference PDS writes it)."""
    label = _unsigned(row.src, row.uri, row.val, row.neg, row.cts, row.exp)
    label["sig"] = {"$bytes": base64.b64encode(row.sig).decode("ascii").rstrip("=")}
    return label


def _frame(header: dict[str, Any], body: dict[str, Any]) -> bytes:
    return bytes(libipld.encode_dag_cbor(header)) + bytes(libipld.encode_dag_cbor(body))


def labels_frame(seq: int, rows: Sequence[LabelRow]) -> bytes:
    """One ``#labels`` message: header ``{op: 1, t: "#labels"}`` + body ``{seq, labels}``."""
    return _frame({"op": 1, "t": "#labels"}, {"seq": seq, "labels": [label_wire(r) for r in rows]})


def info_frame(name: str, message: str | None = None) -> bytes:
    body: dict[str, Any] = {"name": name}
    if message is not None:
        body["message"] = message
    return _frame({"op": 1, "t": "#info"}, body)


def error_frame(error: str, message: str) -> bytes:
    """An error frame (``op: -1``); the stream is closed after it."""
    return _frame({"op": -1}, {"error": error, "message": message})
