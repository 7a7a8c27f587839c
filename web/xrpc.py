"""The labeler over XRPC (DESIGN §3; lexicons com.atproto.label.*), and its DID document.

``GET /.well-known/did.json``
    The labeler's did:web document: ``#atproto_label`` (Multikey, secp256k1) and ``#atproto_labeler``.

``GET /xrpc/com.atproto.label.queryLabels?uriPatterns=...&sources=...&limit=...&cursor=...``
    ``uriPatterns`` (required, repeatable): an exact URI, or a prefix ending in ``*`` (``*`` alone
    matches everything). ``sources``: labeler DIDs. ``limit`` 1-250 (default 50). The answer holds
    the latest label per (src, uri, val), negations included, in seq order:
    ``{"cursor": "<seq>", "labels": [label, ...]}`` (``sig`` as ``{"$bytes": base64}``); pass
    ``cursor`` back for the next page. Bad parameters: 400 ``{"error": "InvalidRequest", "message"}``.

``GET /xrpc/com.atproto.label.subscribeLabels?cursor=N`` (websocket)
    Binary frames, each a DAG-CBOR header then a DAG-CBOR body: ``{op: 1, t: "#labels"}`` +
    ``{seq, labels: [label]}``, one per stored label. Without a cursor: live labels only. With one:
    every label with seq > cursor first, then live. A cursor older than the oldest label kept gets
    ``#info {name: "OutdatedCursor"}`` and the replay starts at the oldest kept; a cursor ahead of
    the newest gets an error frame ``FutureCursor`` and the stream closes.

The labeler is ``services.labeler``: the supervisor always builds one (it runs its checks only where
DNS checks run, i.e. ``services.verifier`` is set).
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from quart import Blueprint, Response, current_app, jsonify, request, websocket
from werkzeug.exceptions import ServiceUnavailable

from relay.app.services import Services
from relay.labeler import Labeler
from relay.labeler.labels import error_frame, info_frame, label_json, labels_frame

log = logging.getLogger("web.xrpc")

blueprint = Blueprint("xrpc", __name__)

MAX_LIMIT = 250
REPLAY_BATCH = 500
POLL = 5.0  # also picks up labels written by another process


def _services() -> Services:
    svc: Services = current_app.extensions["atmos"]
    return svc


def labeler() -> Labeler:
    found = _services().labeler
    if found is None:
        raise ServiceUnavailable("this relay runs no labeler")
    return found


def _xrpc_error(message: str, error: str = "InvalidRequest", status: int = 400) -> Response:
    resp = jsonify({"error": error, "message": message})
    resp.status_code = status
    return resp


def _int_arg(name: str, value: str | None, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if not lo <= number <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}")
    return number


@blueprint.get("/.well-known/did.json")
async def did_json() -> Response:
    lab = labeler()
    endpoint = lab.cfg.public_url
    if not endpoint or endpoint.endswith(":0"):
        endpoint = request.host_url
    return jsonify(lab.did_document(endpoint))


@blueprint.get("/xrpc/com.atproto.label.queryLabels")
async def query_labels() -> Response:
    patterns = [p for p in request.args.getlist("uriPatterns") if p]
    sources = [s for s in request.args.getlist("sources") if s]
    if not patterns:
        return _xrpc_error("uriPatterns is required")
    if len(patterns) > 100 or len(sources) > 100:
        return _xrpc_error("too many uriPatterns or sources (at most 100)")
    try:
        limit = _int_arg("limit", request.args.get("limit"), 50, 1, MAX_LIMIT)
        cursor = _int_arg("cursor", request.args.get("cursor"), 0, 0, 2**62)
    except ValueError as exc:
        return _xrpc_error(str(exc))
    rows = await labeler().store.query_labels(patterns, sources, cursor, limit)
    body: dict[str, Any] = {"labels": [label_json(r) for r in rows]}
    if rows:
        body["cursor"] = str(rows[-1].seq)
    return jsonify(body)


async def _fail(frame: bytes) -> None:
    """Send an error frame, then let the client close (it must, per the event-stream spec); closing
    from both ends at once races in hypercorn. A client that lingers is closed after 5 s."""
    await websocket.send(frame)
    with trio.move_on_after(5):
        while True:
            await websocket.receive()


@blueprint.websocket("/xrpc/com.atproto.label.subscribeLabels")
async def subscribe_labels() -> None:
    lab = labeler()
    raw = websocket.args.get("cursor")
    await websocket.accept()
    lo, hi = await lab.store.label_seq_bounds()
    if raw is None or raw == "":
        last = hi
    else:
        last = int(raw) if raw.isascii() and raw.isdigit() else -1
        if last < 0:
            await _fail(error_frame("InvalidRequest", "cursor must be a non-negative integer"))
            return
        if last > hi:
            await _fail(error_frame("FutureCursor", f"cursor {last} is ahead of the newest label ({hi})"))
            return
        if lo > 0 and last < lo - 1:
            await websocket.send(info_frame("OutdatedCursor", f"labels before seq {lo} are no longer kept"))
            last = lo - 1
    while True:
        changed = lab.changed()  # taken before reading: a label stored meanwhile wakes us at once
        rows = await lab.store.labels_after(last, REPLAY_BATCH)
        for row in rows:
            await websocket.send(labels_frame(row.seq, [row]))
            last = row.seq
        if len(rows) == REPLAY_BATCH:
            continue
        with trio.move_on_after(POLL):
            await changed.wait()
