"""The package boundaries of DESIGN §2, checked on the source (import graph by AST)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = sys.stdlib_module_names


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("spool"), ids=lambda p: p.name)
def test_spool_imports_stdlib_only(path: Path) -> None:
    allowed_third_party = {"trio"} if path.name == "aio.py" else set()
    for name in imports_of(path):
        top = name.split(".")[0]
        assert top in STDLIB or top == "spool" or top in allowed_third_party, f"{path.name} imports {name}"


@pytest.mark.parametrize("path", modules("relay"), ids=lambda p: str(p.relative_to(ROOT)))
def test_relay_never_imports_web_or_tui(path: Path) -> None:
    for name in imports_of(path):
        top = name.split(".")[0]
        if top in {"web", "tui"}:
            # The supervisor alone wires the HTTP app into the root nursery; the CLI alone starts the console.
            allowed = {"supervisor.py": "web", "cli.py": "tui"}
            assert allowed.get(path.name) == top, f"{path} imports {name}"


def test_only_spool_calls_fsync() -> None:
    for package in ("relay", "web", "tui"):
        for path in modules(package):
            text = path.read_text()
            assert "fsync(" not in text and "fdatasync(" not in text, f"{path} calls fsync"


SANS_IO = [
    "relay/smtp/core.py", "relay/smtp/events.py", "relay/smtp/reply.py", "relay/smtp/lines.py",
    "relay/smtp/envelope.py", "relay/smtp/data.py", "relay/smtp/limits.py",
]


@pytest.mark.parametrize("rel", SANS_IO)
def test_smtp_core_is_sans_io(rel: str) -> None:
    path = ROOT / rel
    if not path.exists():
        pytest.fail(f"{rel} missing")
    for name in imports_of(path):
        assert name.split(".")[0] not in {"trio", "socket", "ssl", "asyncio", "selectors"}, f"{rel} imports {name}"
