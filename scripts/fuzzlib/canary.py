"""``python -m fuzzlib.canary SUBMISSION_PORT HTTP_PORT DID API_KEY DOMAIN``: a well-behaved member during the fuzz.

Every ``INTERVAL`` seconds, alternately over SMTP submission (STARTTLS + AUTH PLAIN, as a mail client
does) and ``POST /v1/send``, one ordinary message to ``someone@example.org`` (dev: the capture sink),
from 127.0.0.2, which stands for another person on the internet than the battery's 127.0.0.1. A process
of its own, so what it measures is the relay's answer, not the battery's busy event loop.

When stdin closes it stops sending, then waits (bounded) until every accepted message has reached
``sent`` (``GET /v1/messages/{id}``), and prints one JSON line: what was tried, accepted and delivered,
the accept latencies, and the first few failures verbatim.
"""

from __future__ import annotations

import email.policy
import json
import select
import smtplib
import ssl
import sys
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any

HOST = "127.0.0.1"
SOURCE = "127.0.0.2"
INTERVAL = 1.0
DRAIN = 120.0  # seconds the accepted messages get to be delivered after the battery ends


class Source(urllib.request.HTTPHandler):
    """HTTP from 127.0.0.2 (urllib has no source address of its own)."""

    def http_open(self, req: Any) -> Any:
        import http.client

        return self.do_open(lambda host, **kw: http.client.HTTPConnection(host, source_address=(SOURCE, 0), **kw),
                            req)


OPENER = urllib.request.build_opener(Source)


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the dev relay's certificate is self-signed
    return ctx


def message(did: str, domain: str, n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"canary@{domain}"
    msg["To"] = "someone@example.org"
    msg["Subject"] = f"canary {n} from {did}"
    msg["Message-ID"] = f"<canary-{n}-{int(time.time())}@{domain}>"
    msg.set_content(f"An ordinary message, number {n}, sent while the battery runs.\n")
    return msg


def by_smtp(port: int, did: str, key: str, domain: str, n: int) -> list[int]:
    with smtplib.SMTP(HOST, port, timeout=30, source_address=(SOURCE, 0)) as s:
        s.ehlo("canary.test")
        s.starttls(context=tls())
        s.ehlo("canary.test")
        s.login(did, key)
        s.mail(f"canary@{domain}")
        code, text = s.rcpt("someone@example.org")
        if code != 250:
            raise smtplib.SMTPRecipientsRefused({"someone@example.org": (code, text)})
        code, text = s.data(message(did, domain, n).as_bytes(policy=email.policy.SMTP))  # CRLF
        if code != 250:
            raise smtplib.SMTPDataError(code, text)
        ids = text.decode().split("queued as ")[1].split(";")[0]
        return [int(i) for i in ids.split(",")]


def api(port: int, did: str, key: str, path: str, body: dict[str, Any] | None = None) -> Any:
    req = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {key}", "X-Atmos-DID": did, "Content-Type": "application/json"},
    )
    with OPENER.open(req, timeout=30) as resp:
        return json.loads(resp.read())


def by_http(port: int, did: str, key: str, domain: str, n: int) -> list[int]:
    body = {"from": f"canary@{domain}", "to": "someone@example.org", "subject": f"canary {n}",
            "text": f"An ordinary message, number {n}, sent while the battery runs."}
    answer = api(port, did, key, "/v1/send", body)
    if answer.get("rejected"):
        raise RuntimeError(f"rejected: {answer['rejected']}")
    return [int(a["messageId"]) for a in answer["accepted"]]


def main() -> None:
    submission, http_port, did, key, domain = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6]
    tried = 0
    accepted: dict[str, list[int]] = {"smtp": [], "http": []}
    latency: list[float] = []
    failures: list[str] = []
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], INTERVAL)
        if ready and not sys.stdin.readline():
            break
        way = "smtp" if tried % 2 == 0 else "http"
        tried += 1
        started = time.perf_counter()
        try:
            ids = (by_smtp if way == "smtp" else by_http)(submission if way == "smtp" else http_port,
                                                          did, key, domain, tried)
            latency.append((time.perf_counter() - started) * 1000)
            accepted[way] += ids
        except (OSError, smtplib.SMTPException, urllib.error.URLError, ValueError, KeyError, RuntimeError) as exc:
            failures.append(f"{way}: {type(exc).__name__}: {exc}"[:300])
    pending = set(accepted["smtp"] + accepted["http"])
    statuses: dict[int, str] = {}
    deadline = time.monotonic() + DRAIN
    while pending and time.monotonic() < deadline:
        for message_id in sorted(pending):
            try:
                statuses[message_id] = api(http_port, did, key, f"/v1/messages/{message_id}")["status"]
            except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                statuses[message_id] = f"unknown ({type(exc).__name__})"
            if statuses[message_id] in ("sent", "bounced"):
                pending.discard(message_id)
        if pending:
            time.sleep(1.0)
    counts: dict[str, int] = {}
    for value in statuses.values():
        counts[value] = counts.get(value, 0) + 1
    print(json.dumps({
        "tried": tried, "accepted_smtp": len(accepted["smtp"]), "accepted_http": len(accepted["http"]),
        "sent": counts.get("sent", 0), "statuses": counts, "ms": latency, "failures": failures[:10],
        "failed": len(failures),
    }), flush=True)


if __name__ == "__main__":
    main()
