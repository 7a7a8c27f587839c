"""Malformed HTTP requests and websocket upgrades against the relay's one HTTP listener.

Kinds (issue 13's list and the classics): bad chunking, a 1 MB header, 10,000 headers, bytes
trailing a websocket upgrade (any path, no/wrong/valid token) or an h2c upgrade / HTTP/2 preface,
request-line junk, conflicting lengths, hostile JSON to the API (authenticated and not), 8-bit bytes
in headers and paths, junk frames on an accepted websocket, and slowloris (handled by
``__main__``: a few connections held open a byte at a time, bounded in time).

A case returns the status line's code ("500" is a bug the battery reports) or what happened.
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections.abc import Awaitable, Callable

from .relay import Target
from .wire import Conn

Case = Callable[[Conn, Target, random.Random], Awaitable[str]]
PATHS = [
    b"/",
    b"/healthz",
    b"/v1/send",
    b"/v1/messages/1",
    b"/v1/messages/99999999999999999999999",
    b"/member/status",
    b"/member/forward-to",
    b"/member/webhook",
    b"/v1/suppressions",
    b"/enroll",
    b"/account",
    b"/oauth/callback",
    b"/u/abc",
    b"/docs",
    b"/metrics",
    b"/admin/api/snapshot",
    b"/xrpc/com.atproto.label.queryLabels",
    b"/openapi.json",
    b"/static/style.css",
    b"/no/such",
]
FRAME = bytes([0x81, 0x85]) + b"abcd" + bytes(b ^ k for b, k in zip(b"hello", b"abcda", strict=True))


def status(response: bytes) -> str:
    if response.startswith(b"HTTP/1.1 ") and len(response) >= 12:
        return response[9:12].decode("ascii", "replace")
    return "closed" if not response else "other"


async def exchange(conn: Conn, data: bytes, first: float = 5.0) -> str:
    await conn.send(data)
    return status(await conn.read(first=first))


def auth(t: Target) -> bytes:
    return (f"Authorization: Bearer {t.api_key}\r\nX-Atmos-DID: {t.did}\r\n").encode()


def request(method: bytes, path: bytes, headers: bytes = b"", body: bytes = b"", *, length: bool = True) -> bytes:
    extra = b"Content-Length: %d\r\n" % len(body) if length and body else b""
    return method + b" " + path + b" HTTP/1.1\r\nHost: relay.test\r\n" + headers + extra + b"\r\n" + body


def hostile_json(rng: random.Random, t: Target) -> bytes:
    depth = rng.choice([1, 5, 33, 500, 100_000])
    shapes: list[bytes] = [
        b"[" * depth + b"]" * depth,
        b'{"a":' * min(depth, 5000) + b"1" + b"}" * min(depth, 5000),
        json.dumps({"from": f"a@{t.domain}", "to": "b@example.org", "subject": "\ud800", "text": "x"}).encode(),
        json.dumps({"from": f"a@{t.domain}", "to": {"x": 1}, "text": 1}).encode(),
        json.dumps({"from": f"a@{t.domain}", "to": ["b@example.org"] * 500, "text": "x"}).encode(),
        json.dumps(
            {"from": f"a@{t.domain}", "to": "b@example.org", "headers": {"X-\u00e9": "v", "X-A": ["x"]}, "text": "t"}
        ).encode(),
        json.dumps(
            {
                "from": f"a@{t.domain}",
                "to": "b@example.org",
                "subject": "caf\u00e9 \u65e5\u672c",
                "text": "ok",
                "category": rng.choice(["transactional", "x" * 100, ""]),
            }
        ).encode(),
        b'{"from": 1e99999, "to": NaN, "text": Infinity}',
        b'{"from": "\xe9\xff"}',
        b"\xef\xbb\xbf{}",
        b"",
        b'{"a": "' + b"\\u0000" * 1000 + b'"}',
        os.urandom(rng.randint(1, 300)),
        json.dumps({"domain": "\ud800", "forward_to": "x" * 10_000}).encode(),
        json.dumps({"url": "http://127.0.0.1:1/" + "a" * 5000, "events": [None, 1, {"x": []}]}).encode(),
    ]
    return rng.choice(shapes)


async def case_bad_chunking(conn: Conn, t: Target, rng: random.Random) -> str:
    chunks = rng.choice(
        [
            b"zz\r\nabc\r\n0\r\n\r\n",
            b"ffffffffffffffffffffff\r\nabc\r\n",
            b"-5\r\nabc\r\n0\r\n\r\n",
            b"3;ext=\xff\r\nabc\r\n0\r\nX-Trailer: \x00\r\n\r\n",
            b"3\nabc\n0\n\n",
            b"5\r\nabc\r\n0\r\n\r\n",
            b"0\r\n" + b"X: y\r\n" * 5000 + b"\r\n",
            b"1\r\na\r\n" * 20000 + b"0\r\n\r\n",
        ]
    )
    te = rng.choice(
        [
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked, gzip\r\n",
            b"Transfer-Encoding: xchunked\r\n",
            b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        ]
    )
    path = rng.choice([b"/v1/send", b"/member/webhook", b"/enroll", b"/u/x"])
    return await exchange(
        conn, request(b"POST", path, te + auth(t) + b"Content-Type: application/json\r\n", chunks, length=False)
    )


async def case_huge_header(conn: Conn, t: Target, rng: random.Random) -> str:
    size = rng.choice([17 * 1024, 100 * 1024, 1 << 20])
    return await exchange(conn, request(b"GET", rng.choice(PATHS), b"X-Big: " + b"a" * size + b"\r\n"))


async def case_many_headers(conn: Conn, t: Target, rng: random.Random) -> str:
    n = rng.choice([200, 1000, 10_000])
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(n))
    return await exchange(conn, request(b"GET", rng.choice(PATHS), headers))


async def case_ws_trailing(conn: Conn, t: Target, rng: random.Random) -> str:
    path = rng.choice(
        [
            b"/admin/ws",
            b"/xrpc/com.atproto.label.subscribeLabels",
            b"/",
            b"/v1/send",
            b"/xrpc/com.atproto.label.subscribeLabels?cursor=" + rng.choice([b"-1", b"x", b"9" * 40]),
        ]
    )
    token = rng.choice([b"", b"Authorization: Bearer wrong\r\n", f"Authorization: Bearer {t.admin_token}\r\n".encode()])
    trailing = rng.choice([FRAME, b"x", os.urandom(rng.randint(1, 2000)), FRAME * 50, b"GET / HTTP/1.1\r\n\r\n"])
    upgrade = request(
        b"GET",
        path,
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n" + token,
    )
    if rng.random() < 0.5:
        return await exchange(conn, upgrade + trailing)
    await conn.send(upgrade)
    return await exchange(conn, trailing)


async def case_h2c(conn: Conn, t: Target, rng: random.Random) -> str:
    settings = rng.choice(
        [b"!!!", b"", b"AAMAAABkAAQAoAAAAAIAAAAA", base64.urlsafe_b64encode(os.urandom(30)), b"=" * 7]
    )
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    if rng.random() < 0.3:
        return await exchange(conn, preface + os.urandom(rng.randint(0, 200)))
    data = request(
        rng.choice([b"GET", b"OPTIONS", b"POST"]),
        rng.choice(PATHS),
        b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: " + settings + b"\r\n",
    )
    return await exchange(conn, data + rng.choice([b"", preface, os.urandom(100)]))


async def case_request_line(conn: Conn, t: Target, rng: random.Random) -> str:
    line = rng.choice(
        [
            b"GET / HTTP/0.9\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            b"GET  /  HTTP/1.1\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /%ff%fe%00?\xe9=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET http://evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \xe9\xff\r\nX-Atmos-DID: \xff\r\nCookie: atmos_session=\xff\r\n\r\n",
            b"GET / HTTP/1.1\r\n Host: folded\r\n\r\n",
            b"GET / HTTP/1.1\nHost: x\n\n",
            b"\r\n\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nabcde",
            b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\nabc",
            b"POST /v1/send HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort",
            b"GET /v1/messages/abc HTTP/1.1\r\nHost: x\r\n\r\n" * 30,
            os.urandom(rng.randint(1, 500)),
        ]
    )
    return await exchange(conn, line)


async def case_hostile_json(conn: Conn, t: Target, rng: random.Random) -> str:
    path = rng.choice([b"/v1/send", b"/v1/send", b"/member/forward-to", b"/member/webhook", b"/admin/api/command"])
    method = b"PUT" if path.startswith(b"/member/") else b"POST"
    headers = rng.choice(
        [
            auth(t),
            b"",
            b"Authorization: Bearer atmos_wrong\r\nX-Atmos-DID: " + t.did.encode() + b"\r\n",
            f"Authorization: Bearer {t.admin_token}\r\n".encode(),
            b"Authorization: Bearer \xff\xfe\r\nX-Atmos-DID: did:\xe9\r\n",
        ]
    )
    kind = rng.choice([b"application/json", b"text/plain", b"application/json; charset=latin-1"])
    return await exchange(
        conn, request(method, path, headers + b"Content-Type: " + kind + b"\r\n", hostile_json(rng, t))
    )


async def case_paths(conn: Conn, t: Target, rng: random.Random) -> str:
    path = rng.choice(PATHS) + rng.choice(
        [
            b"",
            b"?did=\xff",
            b"?uriPatterns=" + b"*" * 5000,
            b"?cursor=-1",
            b"?state=x&iss=y&code=z",
            b"/..%2f..%2fetc/passwd",
            b"?limit=-1&status=\xe9",
        ]
    )
    method = rng.choice([b"GET", b"POST", b"DELETE", b"PUT", b"HEAD", b"OPTIONS", b"PATCH", b"TRACE", b"FOO"])
    headers = rng.choice([b"", auth(t), b"Cookie: atmos_session=" + os.urandom(30).hex().encode() + b"\r\n"])
    body = rng.choice([b"", b"csrf=x&handle=\xff", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--\r\n"])
    ctype = b"Content-Type: application/x-www-form-urlencoded\r\n" if body else b""
    return await exchange(conn, request(method, path, headers + ctype, body))


async def case_ws_frames(conn: Conn, t: Target, rng: random.Random) -> str:
    """A websocket that was accepted, then junk frames: bad opcodes, unmasked, oversized, bad UTF-8."""
    path = rng.choice([b"/admin/ws", b"/xrpc/com.atproto.label.subscribeLabels"])
    upgrade = request(
        b"GET",
        path,
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: "
        + base64.b64encode(os.urandom(16))
        + b"\r\n"
        + f"Authorization: Bearer {t.admin_token}\r\n".encode(),
    )
    await conn.send(upgrade)
    head = await conn.read(first=5, idle=0.05)
    if not head.startswith(b"HTTP/1.1 101"):
        return status(head)
    mask = os.urandom(4)

    def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
        header = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + n.to_bytes(8, "big")
        return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

    frames = rng.choice(
        [
            masked(0x1, b"\xff\xfe not utf-8"),
            masked(0x3, b"reserved opcode"),
            bytes([0x81, 0x05]) + b"hello",
            bytes([0x81, 0xFF]) + (1 << 62).to_bytes(8, "big") + mask,
            masked(0x9, b"p" * 125, fin=False),
            masked(0x8, b"\x03\xe7bad close code"),
            masked(0x1, b'{"type": "command", "data": ' + b"[" * 10_000 + b"}"),
            masked(0x1, json.dumps({"v": 1, "type": "command", "data": {"action": "\ud800", "target": "x"}}).encode()),
            masked(0x1, b"x" * 70_000),
            os.urandom(rng.randint(1, 300)),
            masked(0x0, b"continuation without start"),
        ]
    )
    await conn.send(frames)
    await conn.read(first=1, idle=0.05)
    return "ws-frames"


CASES: list[Case] = [
    case_bad_chunking,
    case_huge_header,
    case_many_headers,
    case_ws_trailing,
    case_h2c,
    case_request_line,
    case_hostile_json,
    case_paths,
    case_ws_frames,
]


async def slowloris(conn: Conn, seconds: float) -> bool:
    """Send a request head a byte a second; True when the relay hung up before ``seconds`` passed."""
    import trio

    with trio.move_on_after(seconds):
        await conn.send(b"GET / HTTP/1.1\r\n")
        while await conn.send(b"X"):
            with trio.move_on_after(1):
                if (await conn.read(first=1, idle=0.01)) == b"" and conn.closed_by_peer:
                    return True
        return True
    return False


__all__ = ["CASES", "Case", "slowloris"]
