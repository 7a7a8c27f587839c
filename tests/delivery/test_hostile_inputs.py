"""Property tests: what strangers send to the new parsers (MTA-STS TXT records and policies, TLS-RPT records
and reports, firehose frames) is either understood or refused with the parser's own error, never anything
else (no crash, no traceback reaching a listener)."""

from __future__ import annotations

import gzip
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.mtasts import StsError, parse_policy, parse_record
from relay.delivery.tlsrpt import ReportError, parse_inbound, parse_rua
from relay.labeler.firehose import FrameError, decode_jetstream, decode_repos_frame

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                    max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_policy_parser_refuses_or_parses(body: bytes) -> None:
    try:
        policy = parse_policy(body)
    except StsError as exc:
        assert exc.result_type == "sts-policy-invalid"
    else:
        assert policy.mode in ("enforce", "testing", "none") and 0 <= policy.max_age <= 31_557_600


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=4))
def test_record_parsers_refuse_or_parse(records: list[str]) -> None:
    try:
        sts_id = parse_record(records)
    except StsError:
        pass
    else:
        assert sts_id is None or sts_id.isalnum()
    assert all(u.startswith(("mailto:", "https://")) for u in parse_rua(records))


@settings(max_examples=150, deadline=None)
@given(_json)
def test_inbound_report_parser_refuses_or_summarises(report: object) -> None:
    payload = gzip.compress(json.dumps(report).encode())
    import base64

    data = (b"Content-Type: multipart/report; report-type=tlsrpt; boundary=b\r\n\r\n--b\r\n"
            b"Content-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(payload) + b"\r\n--b--\r\n")
    try:
        parsed = parse_inbound(data, now=0)
    except ReportError:
        pass
    else:
        assert parsed.successes >= 0 and parsed.failures >= 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_frame_decoders_refuse_or_decode(frame: bytes) -> None:
    for decode in (decode_repos_frame, decode_jetstream):
        try:
            seen = decode(frame)
        except FrameError:
            continue
        assert seen.cursor is None or isinstance(seen.cursor, int)
