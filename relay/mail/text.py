"""Text that came from outside, made safe to store and show.

Undecodable 8-bit bytes in a header (a legacy Latin-1 ``Subject: café``) travel through the relay as
lone surrogates (``surrogateescape``), so the message itself stays byte-exact; JSON can carry lone
surrogates too (``"\\ud800"``). Neither can be encoded as UTF-8: a store column, an HTML page or a JSON
response would raise. ``display_text`` is the one place where such text becomes valid Unicode:
escaped bytes that form UTF-8 together are decoded, every other one becomes U+FFFD.
"""

from __future__ import annotations

from typing import overload


@overload
def display_text(value: str) -> str: ...
@overload
def display_text(value: None) -> None: ...
def display_text(value: str | None) -> str | None:
    if value is None or value.isascii():
        return value
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate outside the escape range (from JSON): no bytes behind it
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in value)


__all__ = ["display_text"]
