"""SMTP sessions of random and malformed input, for the submission and the inbound port.

Each case is one session, built from a seeded ``random.Random`` so a failing case can be replayed
(``--seed``). The kinds (issue 13's list): overlong lines, bare CR/LF, NUL, invalid UTF-8 and 8-bit
bytes in commands and in submitted headers, malformed AUTH base64, pipelined garbage, STARTTLS twice
(and STARTTLS with commands pipelined behind it), DATA without RCPT, BDAT junk, hostile DSN/ARF
reports to the inbound port (VERP and feedback-loop addresses), and plain random bytes.
"""

from __future__ import annotations

import base64
import random
import ssl
from collections.abc import Awaitable, Callable

from relay.delivery import verp

from .relay import Target
from .wire import Conn

Case = Callable[[Conn, Target, random.Random, ssl.SSLContext, bool], Awaitable[str]]
SECRET = b"fuzz-secret-" + b"k" * 24  # relay.py's ATMOS_SECRET_KEY

VERBS = [
    b"EHLO",
    b"HELO",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"VRFY",
    b"EXPN",
    b"HELP",
    b"QUIT",
    b"STARTTLS",
    b"AUTH",
    b"BDAT",
    b"ETRN",
    b"TURN",
    b"XCLIENT",
    b"mail from:",
    b"rcpt to:",
]
EIGHT_BIT = [
    b"caf\xe9",
    b"\xff\xfe\xfd",
    b"\xc3\x28",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"na\xefve",
    b"\x80\x81\x82",
    "日本語".encode(),
    "😀".encode(),
    b"\xc0\xaf",
]


def junk(rng: random.Random, n: int | None = None) -> bytes:
    n = rng.randint(0, 300) if n is None else n
    alphabet = rng.choice([None, b"\r\n\x00 .:<>@", b"ABCabc012 "])
    if alphabet is None:
        return rng.randbytes(n)
    return bytes(rng.choice(alphabet) for _ in range(n))


def mutate(rng: random.Random, line: bytes) -> bytes:
    """One of the classic breakages of an SMTP line."""
    choice = rng.randrange(9)
    if choice == 0:
        return line.replace(b"\r\n", b"\n")
    if choice == 1:
        return line.replace(b"\r\n", b"\r")
    if choice == 2:
        cut = rng.randrange(len(line) + 1)
        return line[:cut] + b"\x00" + line[cut:]
    if choice == 3:
        cut = rng.randrange(len(line) + 1)
        return line[:cut] + rng.choice(EIGHT_BIT) + line[cut:]
    if choice == 4:
        return line.rstrip(b"\r\n") + b"A" * rng.choice([600, 1001, 4096, 70000]) + b"\r\n"
    if choice == 5:
        return line * rng.randint(2, 50)
    if choice == 6:
        return line[: rng.randrange(len(line) + 1)]
    if choice == 7:
        return line.upper() if rng.random() < 0.5 else line.lower()
    return junk(rng, rng.randint(1, 40)) + line


async def hello(conn: Conn, rng: random.Random) -> bool:
    banner = await conn.read_reply()
    if not banner.startswith(b"220"):
        return False
    await conn.send(b"EHLO fuzz.test\r\n" if rng.random() < 0.9 else b"HELO fuzz.test\r\n")
    return (await conn.read_reply()).startswith(b"250")


async def tls(conn: Conn, ctx: ssl.SSLContext) -> bool:
    await conn.send(b"STARTTLS\r\n")
    if not (await conn.read_reply()).startswith(b"220"):
        return False
    if not await conn.starttls(ctx):
        return False
    await conn.send(b"EHLO fuzz.test\r\n")
    return (await conn.read_reply()).startswith(b"250")


async def login(conn: Conn, target: Target) -> bool:
    token = base64.b64encode(f"\0{target.did}\0{target.api_key}".encode())
    await conn.send(b"AUTH PLAIN " + token + b"\r\n")
    return (await conn.read_reply()).startswith(b"235")


def hostile_headers(rng: random.Random, sender: bytes) -> bytes:
    """A header section a careless or hostile client might send: 8-bit, broken encoded words, junk."""
    subject = rng.choice(
        [
            b"caf\xe9 cr\xe8me",
            b"\xff\xfe" * rng.randint(1, 200),
            "naïve ünïcödé".encode(),
            b"=?utf-8?b?!!!?=",
            b"=?x-unknown?q?abc?=",
            b"=?utf-8?q?" + b"=ZZ" * 50 + b"?=",
            b"a" * rng.choice([100, 998, 5000]),
            b"line\rbreak" if rng.random() < 0.2 else b"tab\there",
            b"nul\x00here",
            b"\xed\xa0\x80 lone surrogate bytes",
        ]
    )
    fields = [
        b"From: " + rng.choice([b"", b"\xe9l\xe8ve ", b'"\xff" ']) + b"<" + sender + b">",
        b"To: someone@example.org",
        b"Subject: " + subject,
        b"Message-ID: <fuzz@fuzz.test>",
    ]
    for _ in range(rng.randint(0, 8)):
        name = rng.choice([b"X-Fuzz", b"X-\xe9t\xe9", b"Bad Name", b"X-Atmos-Category", b"Received", b"\x00"])
        fields.append(name + b": " + clean(junk(rng, rng.randint(0, 120))))
    if rng.random() < 0.2:
        fields.append(b"X-Folded: start\r\n\tcontinued \xe9\r\n continued again")
    if rng.random() < 0.1:
        fields.extend(b"X-Many-%d: v" % i for i in range(rng.choice([500, 3000])))
    return b"\r\n".join(fields) + b"\r\n"


def clean(data: bytes) -> bytes:
    """Without CR and LF: a line that reaches the parsers instead of the bare-newline refusal."""
    return data.replace(b"\r", b"").replace(b"\n", b"")


def body(rng: random.Random) -> bytes:
    lines = [clean(junk(rng, rng.randint(0, 200))) for _ in range(rng.randint(0, 20))]
    lines += [b".leading dot", b"..double", b"\xe9t\xe9 latin-1 body"]
    rng.shuffle(lines)
    text = b"\r\n".join(lines)
    return text.replace(b"\r\n", b"\n") if rng.random() < 0.15 else text  # some with bare LF (550 5.6.11)


def report(rng: random.Random, kind: str) -> bytes:
    """A multipart/report (RFC 6522) DSN or ARF (RFC 5965) body, often broken in one place."""
    boundary = rng.choice([b"b1", b"", b"\xe9", b"x" * 80])
    part2 = (
        b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
        b"Final-Recipient: rfc822; " + rng.choice([b"x@example.org", b"\xff@\xfe", b""]) + b"\r\n"
        b"Action: " + rng.choice([b"failed", b"delayed", b"\x00", b""]) + b"\r\n"
        b"Status: " + rng.choice([b"5.1.1", b"4.2.2", b"9.9.9.9", b"x", b""]) + b"\r\n"
        b"Diagnostic-Code: smtp; 550 " + junk(rng, 60).replace(b"\r\n", b" ") + b"\r\n"
    )
    if kind == "arf":
        part2 = (
            b"Content-Type: message/feedback-report\r\n\r\nFeedback-Type: "
            + rng.choice([b"abuse", b"fraud", b"\xff", b""])
            + b"\r\nUser-Agent: fuzz/1\r\nVersion: 1\r\n"
            b"Original-Mail-From: " + rng.choice([b"<bounces+1-abc@relay.localhost>", b"<\xe9>"]) + b"\r\n"
        )
    parts = [
        b"Content-Type: text/plain\r\n\r\n" + junk(rng, 100),
        part2,
        b"Content-Type: "
        + rng.choice([b"message/rfc822", b"text/rfc822-headers"])
        + b"\r\n\r\n"
        + hostile_headers(rng, b"a@b.example")
        + b"\r\nbody\r\n",
    ]
    if rng.random() < 0.2:
        parts *= rng.randint(2, 200)  # many parts
    sep = b"--" + boundary + b"\r\n"
    mime = sep + sep.join(parts) + b"--" + boundary + (b"--\r\n" if rng.random() < 0.7 else b"\r\n")
    kind_name = b"delivery-status" if kind == "dsn" else b"feedback-report"
    head = (
        b"From: mailer-daemon@mx.example\r\nTo: x\r\nSubject: report \xe9\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/report; report-type=" + kind_name + b'; boundary="' + boundary + b'"\r\n\r\n'
    )
    return head + mime


async def data_phase(conn: Conn, message: bytes) -> str:
    await conn.send(b"DATA\r\n")
    reply = await conn.read_reply()
    if not reply.startswith(b"354"):
        return "data-refused"
    dotted = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in message.split(b"\r\n"))
    await conn.send(dotted + b"\r\n.\r\n")
    final = await conn.read_reply(first=30)
    if final.startswith(b"250"):
        return "accepted"
    return "final-" + final[:9].decode("ascii", "replace").replace(" ", "")


# -- the cases ---------------------------------------------------------------------------------------


async def case_random_bytes(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    await conn.read_reply()
    for _ in range(rng.randint(1, 6)):
        await conn.send(junk(rng))
        await conn.read(first=0.2)
    return "random"


async def case_mutated_commands(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    await conn.read_reply()
    for _ in range(rng.randint(1, 12)):
        verb = rng.choice(VERBS)
        arg = rng.choice(
            [
                b"",
                b" fuzz.test",
                b"<a@b.example>",
                b" <" + rng.choice(EIGHT_BIT) + b"@x.example>",
                b"<> SIZE=" + str(rng.randint(-5, 1 << 40)).encode(),
                b" PLAIN " + junk(rng, 20),
            ]
        )
        line = mutate(rng, verb + arg + b"\r\n") if rng.random() < 0.7 else verb + arg + b"\r\n"
        if not await conn.send(line):
            break
        await conn.read(first=0.3)
    return "mutated"


async def case_overlong(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    await conn.read_reply()
    size = rng.choice([513, 1001, 2048, 65536, 1 << 20, 4 << 20])
    verb = rng.choice([b"EHLO ", b"MAIL FROM:<", b"NOOP ", b""])
    end = rng.choice([b"\r\n", b"", b"\n"])
    await conn.send(verb + b"a" * size + end)
    reply = await conn.read(first=3)
    await conn.send(b"NOOP\r\n")  # is the session still coherent?
    await conn.read(first=1)
    return "overlong-" + (reply[:3].decode("ascii", "replace") or "none")


async def case_line_endings(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    await conn.read_reply()
    script = [b"EHLO fuzz.test\r\n", b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<postmaster@relay.localhost>\r\n"]
    ending = rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r", b"\x00\r\n"])
    await conn.send(b"".join(s.replace(b"\r\n", ending) for s in script))
    await conn.read(first=1)
    await conn.send(b"QUIT\r\n")
    await conn.read(first=1)
    return "line-endings"


async def case_eight_bit_commands(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    await conn.read_reply()
    bad = rng.choice(EIGHT_BIT)
    for line in (
        b"EHLO " + bad + b"\r\n",
        b"MAIL FROM:<" + bad + b"@x.example> SMTPUTF8\r\n",
        b"RCPT TO:<" + bad + b"@" + bad + b">\r\n",
        b"VRFY " + bad + b"\r\n",
        b"HELO \x00" + bad + b"\r\n",
    ):
        if not await conn.send(line):
            break
        await conn.read(first=1)
    return "eight-bit-commands"


async def case_auth_garbage(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    if not await hello(conn, rng):
        return "no-hello"
    if rng.random() < 0.8 and not await tls(conn, ctx):
        return "no-tls"
    attempts = [
        b"AUTH PLAIN !!!notbase64\r\n",
        b"AUTH PLAIN =\r\n",
        b"AUTH PLAIN " + base64.b64encode(b"\xff\xfe\x00\xc3(") + b"\r\n",
        b"AUTH PLAIN " + base64.b64encode(b"\0did:plc:x\0" + rng.randbytes(40)) + b"\r\n",
        b"AUTH LOGIN\r\n" + junk(rng, 30).replace(b"\r\n", b"") + b"\r\n*\r\n",
        b"AUTH LOGIN " + base64.b64encode(b"\xe9") + b"\r\n" + base64.b64encode(b"x" * 3000) + b"\r\n",
        b"AUTH XOAUTH2 " + junk(rng, 50).replace(b"\r\n", b"") + b"\r\n",
        b"AUTH\r\n",
        b"AUTH PLAIN\r\n\r\n",
        b"AUTH PLAIN " + b"A" * 20000 + b"\r\n",
    ]
    for line in rng.sample(attempts, rng.randint(1, 4)):
        if not await conn.send(line):
            break
        await conn.read(first=2)
    return "auth-garbage"


async def case_pipelined_garbage(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    await conn.read_reply()
    rcpt = b"postmaster@relay.localhost"
    script = [
        b"EHLO fuzz.test",
        b"MAIL FROM:<a@b.example>",
        b"RCPT TO:<" + rcpt + b">",
        b"DATA",
        b"Subject: \xe9\r\n\r\nbody",
        b".",
        b"RSET",
        b"NOOP",
        b"QUIT",
    ]
    lines = []
    for item in script:
        lines.append(item)
        if rng.random() < 0.4:
            lines.append(junk(rng, rng.randint(1, 80)).replace(b"\r\n", b" "))
    await conn.send(b"\r\n".join(lines) + b"\r\n")
    await conn.read(first=3)
    return "pipelined"


async def case_starttls_twice(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    if not await hello(conn, rng):
        return "no-hello"
    if rng.random() < 0.5:
        # Commands pipelined after STARTTLS must be discarded (RFC 3207 §4.2, the command-injection class).
        await conn.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\nRCPT TO:<x@y.example>\r\n")
        if not (await conn.read_reply()).startswith(b"220") or not await conn.starttls(ctx):
            return "starttls-refused"
        await conn.send(b"EHLO fuzz.test\r\n")
        await conn.read(first=2)
    elif await tls(conn, ctx):
        await conn.send(b"STARTTLS\r\n")  # again, inside TLS: 503 or 5xx, never a second handshake
        await conn.read(first=2)
    await conn.send(b"STARTTLS\r\n" + junk(rng, 40))
    await conn.read(first=1)
    return "starttls-twice"


async def case_out_of_order(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    if not await hello(conn, rng):
        return "no-hello"
    sequence = rng.choice(
        [
            [b"DATA"],
            [b"MAIL FROM:<a@b.example>", b"DATA"],
            [b"RCPT TO:<x@y.example>", b"DATA"],
            [b"BDAT 10 LAST", b"0123456789"],
            [b"MAIL FROM:<a@b.example>", b"BDAT 5", b"abcde", b"BDAT 0 LAST"],
            [b"BDAT " + str(rng.randint(-1, 1 << 62)).encode()],
            [b"MAIL FROM:<a@b.example>", b"MAIL FROM:<c@d.example>"],
            [b"RSET", b"DATA", b"QUIT", b"NOOP"],
        ]
    )
    for line in sequence:
        if not await conn.send(line + b"\r\n"):
            break
        await conn.read(first=1)
    return "out-of-order"


async def case_submit_hostile_message(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    if not await hello(conn, rng):
        return "no-hello"
    sender = f"fuzz@{t.domain}".encode()
    if sub:
        if not await tls(conn, ctx) or not await login(conn, t):
            return "no-auth"
        rcpt = b"someone@example.org"
    else:
        rcpt = rng.choice([b"postmaster@relay.localhost", b"abuse@relay.localhost", b"postmaster"])
    await conn.send(b"MAIL FROM:<" + sender + b">" + rng.choice([b"", b" BODY=8BITMIME", b" SMTPUTF8"]) + b"\r\n")
    if not (await conn.read_reply()).startswith(b"250"):
        return "mail-refused"
    await conn.send(b"RCPT TO:<" + rcpt + b">\r\n")
    if not (await conn.read_reply()).startswith(b"250"):
        return "rcpt-refused"
    return await data_phase(conn, hostile_headers(rng, sender) + b"\r\n" + body(rng))


async def case_inbound_report(conn: Conn, t: Target, rng: random.Random, ctx: ssl.SSLContext, sub: bool) -> str:
    if sub:  # a report goes to the inbound port; on submission, send a hostile message instead
        return await case_submit_hostile_message(conn, t, rng, ctx, sub)
    if not await hello(conn, rng):
        return "no-hello"
    kind = rng.choice(["dsn", "arf"])
    if kind == "dsn":
        rcpt = verp.encode(rng.randint(1, 5000), secret=SECRET, domain=t.operator_domain).encode()
        if rng.random() < 0.3:
            rcpt = b"bounces+" + junk(rng, 12).replace(b"\r\n", b"") + b"@relay.localhost"
    else:
        rcpt = b"fbl@relay.localhost"
    await conn.send(b"MAIL FROM:<>\r\n")
    if not (await conn.read_reply()).startswith(b"250"):
        return "mail-refused"
    await conn.send(b"RCPT TO:<" + rcpt + b">\r\n")
    if not (await conn.read_reply()).startswith(b"250"):
        return "rcpt-refused"
    return await data_phase(conn, report(rng, kind))


CASES: list[Case] = [
    case_random_bytes,
    case_mutated_commands,
    case_overlong,
    case_line_endings,
    case_eight_bit_commands,
    case_auth_garbage,
    case_pipelined_garbage,
    case_starttls_twice,
    case_out_of_order,
    case_submit_hostile_message,
    case_inbound_report,
]

__all__ = ["CASES", "Case"]
