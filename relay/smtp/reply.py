"""SMTP replies as values (RFC 5321 §4.2, enhanced codes RFC 3463).

Pure: no I/O. A ``Reply`` renders itself to wire bytes, multi-line when the
text holds several lines (RFC 5321 §4.2.1: ``250-`` continuation lines).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str | None = None  # e.g. "5.7.8"; None for replies without one (220, 354, ...)
    text: str = ""
    lines: tuple[str, ...] = ()  # extra lines (EHLO keywords); rendered after ``text``

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def all_lines(self) -> list[str]:
        first = f"{self.enhanced} {self.text}" if self.enhanced else self.text
        return [first, *self.lines]

    def to_bytes(self) -> bytes:
        out = []
        lines = self.all_lines()
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{self.code}{sep}{line}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        return " ".join(str(p) for p in (self.code, self.enhanced, self.text) if p)
