"""JSON request bodies from strangers: parsed without a traceback, every refusal names the field.

- RFC 8259 allows any nesting; Python's parser recurses and raises RecursionError somewhere past a
  few thousand levels (a 500 before). No relay body nests deeper than a few levels: past
  ``MAX_DEPTH`` the body is refused (400), checked without recursion.
- A JSON string may spell a lone surrogate (``"\\ud800"``), which is no Unicode text (RFC 8259 §8.2,
  I-JSON RFC 7493 §2.1) and cannot become UTF-8 mail: refused, naming the field that holds it.
"""

from __future__ import annotations

import json
from typing import Any

from relay.errors import InvalidRequest

MAX_DEPTH = 32


def parse_json(raw: bytes | str) -> Any:
    try:
        value = json.loads(raw)
    except RecursionError:
        raise InvalidRequest(f"body: JSON nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from None
    _check(value)
    return value


def _check(value: Any) -> None:
    """Depth and text of every value, iteratively; the error names the path (``to[2]``, ``headers.X``)."""
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"{path or 'body'}: JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            _text(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                _text(key, path or "body")
                stack.append((f"{path}.{key}" if path else key, child, depth + 1))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", child, depth + 1) for i, child in enumerate(item))


def _text(text: str, path: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"{path or 'body'}: not Unicode text (a lone surrogate escape)") from None


__all__ = ["MAX_DEPTH", "parse_json"]
