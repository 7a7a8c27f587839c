"""Protocol limits of the SMTP core, every one configurable (Postfix style).

Defaults follow RFC 5321 §4.5.3.1 (minimum sizes an implementation must accept)
and RFC 4954 §4 (SASL response lines).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    # §4.5.3.1.4: a command line is at most 512 octets including the CRLF.
    max_command_line: int = 512
    # §4.5.3.1.6: a text line is at most 1000 octets including the CRLF.
    max_text_line: int = 1000
    # RFC 4954 §4: a SASL response line may be up to 12288 octets.
    max_auth_line: int = 12288
    # Message size after dot-unstuffing (RFC 1870 SIZE).
    max_message_size: int = 25 * MiB
    # §4.5.3.1.8: at least 100 recipients must be buffered; past the limit -> 452 4.5.3.
    max_recipients: int = 100
    # Errors (bad syntax, sequence, unknown commands, failed AUTH, refused MAIL/RCPT) before
    # 421 4.7.0 and close; reset by a delivered message (Postfix smtpd_hard_error_limit).
    max_errors: int = 20
    # NOOP, RSET, VRFY and HELP allowed before each one also counts as an error; reset by a
    # delivered message (Postfix smtpd_junk_command_limit).
    max_junk_commands: int = 100

    def __post_init__(self) -> None:
        for name in ("max_command_line", "max_text_line", "max_auth_line"):
            if getattr(self, name) < 3:
                raise ValueError(f"{name} must be at least 3 (a line holds CRLF)")
        if self.max_message_size < 0 or self.max_recipients < 1 or self.max_errors < 1:
            raise ValueError("message size must be >= 0, recipients and errors >= 1")
        if self.max_junk_commands < 0:
            raise ValueError("max_junk_commands must be >= 0")
