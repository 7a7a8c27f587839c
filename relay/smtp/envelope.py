"""MAIL FROM / RCPT TO arguments: paths and ESMTP parameters. Pure.

Grammar from RFC 5321 §4.1.2 (Path, Mailbox, Mail-parameters), extended by
RFC 6531 §3.3 (UTF-8 in addresses), with the parameters we advertise:
SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), AUTH (RFC 4954 §5).
Errors are ``ArgumentError`` carrying the reply to send.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from relay.smtp.reply import Reply


class ArgumentError(ValueError):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Envelope:
    address: str
    params: dict[str, str]


# atext (RFC 5322 §3.2.3) plus any non-ASCII character (RFC 6531 §3.3 UTF8-non-ascii).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"\Z')
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]+\]\Z")  # §4.1.3, checked loosely
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")  # esmtp-value, UTF-8 per RFC 6531
_ROUTE = re.compile(r"@[^,:]+(?:,@[^,:]+)*:")  # A-d-l, §4.1.2: ignored (Appendix C)

MAIL_PARAMS = frozenset({"SIZE", "BODY", "SMTPUTF8", "AUTH"})


def parse_mail(arg: str, *, max_size: int) -> Envelope:
    """``FROM:<path> [params]`` -> Envelope; the null path ``<>`` gives address ""."""
    rest = _strip_keyword(arg, "FROM:", "MAIL FROM:<address>")
    path, tail = _split_path(rest, Reply(501, "5.1.7", "bad sender address syntax"))
    params = parse_params(tail)
    _check_mail_params(params, max_size)
    if path:
        _check_mailbox(path, Reply(501, "5.1.7", "bad sender address syntax"))
    _check_utf8(path, "SMTPUTF8" in params)
    return Envelope(path, params)


def parse_rcpt(arg: str, *, smtputf8: bool) -> Envelope:
    """``TO:<path> [params]`` -> Envelope; ``<postmaster>`` without a domain is allowed."""
    rest = _strip_keyword(arg, "TO:", "RCPT TO:<address>")
    bad = Reply(501, "5.1.3", "bad recipient address syntax")
    path, tail = _split_path(rest, bad)
    params = parse_params(tail)
    if params:
        # We advertise no RCPT parameters (no DSN): RFC 5321 §4.1.1.11 -> 555.
        raise ArgumentError(Reply(555, "5.5.4", f"unsupported parameter {next(iter(params))}"))
    if path.lower() != "postmaster":  # §4.1.1.3: <Postmaster> needs no domain
        _check_mailbox(path, bad)
    _check_utf8(path, smtputf8)
    return Envelope(path, params)


def parse_params(text: str) -> dict[str, str]:
    """ESMTP ``KEY[=VALUE]`` parameters (§4.1.2); keys upper-cased, "" for no value."""
    params: dict[str, str] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            raise ArgumentError(Reply(501, "5.5.4", "bad parameter syntax"))
        key = key.upper()
        if key in params:
            raise ArgumentError(Reply(501, "5.5.4", f"duplicate parameter {key}"))
        params[key] = value
    return params


def _strip_keyword(arg: str, keyword: str, usage: str) -> str:
    if arg[: len(keyword)].upper() != keyword:
        raise ArgumentError(Reply(501, "5.5.4", f"syntax: {usage}"))
    # Not in the grammar, but common (and accepted by Postfix): "MAIL FROM: <a@b>".
    return arg[len(keyword) :].lstrip(" ")


def _split_path(text: str, bad: Reply) -> tuple[str, str]:
    """``<path> rest`` -> (mailbox without source route, rest)."""
    if not text.startswith("<"):
        raise ArgumentError(bad)
    end = _closing_bracket(text)
    if end < 0 or (end + 1 < len(text) and text[end + 1] != " "):
        raise ArgumentError(bad)
    path = text[1:end]
    route = _ROUTE.match(path)
    if route is not None:
        path = path[route.end() :]
    return path, text[end + 1 :]


def _closing_bracket(text: str) -> int:
    """Index of the ``>`` that closes the path, skipping quoted strings."""
    if '"' not in text:
        return text.find(">")
    quoted, i = False, 1
    while i < len(text):
        ch = text[i]
        if quoted and ch == "\\":
            i += 1
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
        i += 1
    return -1


def _check_mailbox(path: str, bad: Reply) -> None:
    local, at, domain = path.rpartition("@")
    if not at or not local or not domain:
        raise ArgumentError(bad)
    # §4.5.3.1.1-3: local-part 64, domain 255, path 256 octets.
    if len(local.encode()) > 64 or len(domain.encode()) > 255 or len(path.encode()) > 254:
        raise ArgumentError(bad)
    if not (_DOT_STRING.match(local) or _QUOTED.match(local)):
        raise ArgumentError(bad)
    if not (_DOMAIN.match(domain) or _LITERAL.match(domain)):
        raise ArgumentError(bad)


def _check_utf8(path: str, smtputf8: bool) -> None:
    if not smtputf8 and not path.isascii():
        # RFC 6531 §3.2: non-ASCII addresses only in an SMTPUTF8 transaction.
        raise ArgumentError(Reply(553, "5.6.7", "non-ASCII address requires SMTPUTF8"))


def _check_mail_params(params: dict[str, str], max_size: int) -> None:
    for key in params:
        if key not in MAIL_PARAMS:
            raise ArgumentError(Reply(555, "5.5.4", f"unsupported parameter {key}"))
    if "SIZE" in params:
        size = params["SIZE"]
        if not size.isascii() or not size.isdigit() or len(size) > 20:
            raise ArgumentError(Reply(501, "5.5.4", "bad SIZE value"))
        if int(size) > max_size:
            # RFC 1870 §6.1: refuse at MAIL time, permanently.
            raise ArgumentError(Reply(552, "5.3.4", "message size exceeds fixed maximum message size"))
    if params.get("BODY", "7BIT").upper() not in ("7BIT", "8BITMIME"):
        raise ArgumentError(Reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME"))
    if params.get("SMTPUTF8", ""):
        raise ArgumentError(Reply(501, "5.5.4", "SMTPUTF8 takes no value"))
