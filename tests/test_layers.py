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
    "relay/smtp/clientcore.py",  # the client side's state machine: sans-I/O like the server's
]


@pytest.mark.parametrize("rel", SANS_IO)
def test_smtp_core_is_sans_io(rel: str) -> None:
    path = ROOT / rel
    if not path.exists():
        pytest.fail(f"{rel} missing")
    for name in imports_of(path):
        assert name.split(".")[0] not in {"trio", "socket", "ssl", "asyncio", "selectors"}, f"{rel} imports {name}"


def _all_imports(path: Path) -> set[str]:
    """Every module named by an import, relative imports resolved (``from . import x`` in tui/screens)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", modules("tui"), ids=lambda p: str(p.relative_to(ROOT)))
def test_console_imports_only_the_event_schema(path: Path) -> None:
    """The console is its own process speaking the /admin/ws schema: of the relay it knows relay.events."""
    for name in _all_imports(path):
        if name.split(".")[0] == "relay":
            assert name in {"relay", "relay.events"} or name.startswith("relay.events."), f"{path} imports {name}"


@pytest.mark.parametrize("path", [*modules("relay"), *modules("spool"), *modules("tui")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_wiring_and_web_import_services(path: Path) -> None:
    """Services is the wiring's product, handed to the HTTP layer; everything else takes what it needs."""
    allowed = {ROOT / "relay/supervisor.py", ROOT / "relay/services.py"}
    if path in allowed:
        return
    for name in _all_imports(path):
        assert name != "relay.services" and not name.startswith("relay.services."), f"{path} imports {name}"


def test_services_is_frozen_and_never_probed() -> None:
    """Services is built complete before anything starts (relay/supervisor.py): no layer asks whether a
    field exists yet, and nothing can attach one to it while it runs."""
    import dataclasses

    from relay.services import Services

    assert Services.__dataclass_params__.frozen  # type: ignore[attr-defined]
    fields = {f.name for f in dataclasses.fields(Services)}
    for package in ("web", "relay"):
        for path in modules(package):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                        "getattr", "hasattr") and len(node.args) >= 2:
                    name = node.args[1]
                    probed = isinstance(name, ast.Constant) and name.value in fields
                    assert not probed, f"{path}:{node.lineno} probes a Services field with {node.func.id}"
