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
    allowed = {ROOT / "relay/app/supervisor.py", ROOT / "relay/app/services.py", ROOT / "relay/app/listeners.py",
               ROOT / "relay/app/startup.py"}
    if path in allowed:
        return
    for name in _all_imports(path):
        assert name != "relay.app.services" and not name.startswith("relay.app.services."), f"{path} imports {name}"


def test_services_is_frozen_and_never_probed() -> None:
    """Services is built complete before anything starts (relay/app/supervisor.py): no layer asks whether a
    field exists yet, and nothing can attach one to it while it runs."""
    import dataclasses

    from relay.app.services import Services

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


# The folders tell the architecture (issue 16): relay/'s top level holds its packages and the small
# vocabulary every layer shares, nothing else.
VOCABULARY = {"__init__.py", "__main__.py", "address.py", "config.py", "errors.py", "events.py"}


def test_relay_top_level_holds_packages_and_the_shared_vocabulary() -> None:
    loose = {p.name for p in (ROOT / "relay").glob("*.py")} - VOCABULARY
    assert not loose, f"modules outside a package: {sorted(loose)} (put each in the package of its concern)"
    for package in (p for p in (ROOT / "relay").iterdir() if p.is_dir() and p.name != "__pycache__"):
        init = package / "__init__.py"
        assert init.exists(), f"{package} is not a package"


# Imports inside functions hide cycles; these two are deliberate.
LAZY = {
    ("relay/app/cli.py", "relay.app.supervisor"),  # `atmos admin` and `atmos console` never load the server
    ("relay/config.py", "relay.delivery.dane"),  # the config is the bottom layer; the DANE rule lives with DANE
    ("relay/store/__init__.py", "relay.store.postgres"),  # psycopg is loaded only by a PostgreSQL deployment
}


def _relay_imports(path: Path, *, nested: bool) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: never executed
            deeper = inside or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom) and deeper == nested:
                # ``from relay.pkg import sub`` imports the submodule: name it, and resolve() keeps the
                # longest prefix that is a module.
                names = ([a.name for a in child.names] if isinstance(child, ast.Import)
                         else [f"{child.module}.{a.name}" for a in child.names] if child.level == 0 else [])
                found.update(n for n in names if n.split(".")[0] == "relay")
            visit(child, deeper)

    visit(tree, False)
    return found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


RELAY_MODULES = {_module_name(p): p for p in modules("relay")}


def _resolve(name: str) -> str | None:
    """The module an imported name lives in (the longest prefix that is one)."""
    while name and name not in RELAY_MODULES:
        name = name.rpartition(".")[0]
    return name or None


@pytest.mark.parametrize("path", modules("relay"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_hidden_imports_inside_functions(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    for name in _relay_imports(path, nested=True):
        module = _resolve(name)
        assert (rel, module) in LAZY, f"{rel} imports {module} inside a function: import it at the top (cut the cycle)"


def test_relay_modules_import_each_other_without_cycles() -> None:
    graph = {m: {r for n in _relay_imports(p, nested=False) if (r := _resolve(n)) and r != m and r != "relay"}
             for m, p in RELAY_MODULES.items()}
    done: set[str] = set()

    def walk(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(module):], module]))
        if module in done:
            return
        for dep in sorted(graph[module]):
            walk(dep, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        walk(module, [])
