"""The house's dependency rules, read from the imports of every module (docs/architecture.md).

- the tenant services (oraclewad.services.*) import only each other and the shared modules;
- the daemon (every other oraclewad module) never imports a service;
- the shared modules import only each other (stdlib and libraries aside);
- oraclectl imports only itself and the generated proto code.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Imported by both sides: the child contract, the schema migrator (the daemon checks, the child
# applies) and the pure business rules both must agree on.
SHARED = frozenset({"oraclewad.contract", "oraclewad.childconfig", "oraclewad.templating",
                    "oraclewad.recovery_plan", "oraclewad.antiban_plan", "oraclewad.broadcast_plan",
                    "oraclewad.migrations"})
PROTO = "oraclewad._proto"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, source: str | None = None) -> set[str]:
    """Absolute names of what a module imports (relative imports resolved)."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from oraclewad import contract` imports the module oraclewad.contract.
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return {name for name in found if name.split(".")[0] in ("oraclewad", "oraclectl")}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_module_or_package(name: str) -> bool:
    """`from oraclewad import x` names a module only when x is one (else it is the package)."""
    path = ROOT / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def allowed(me: str, name: str) -> bool:
    if within(me, "oraclectl"):
        return within(name, "oraclectl") or within(name, PROTO)
    if me in SHARED:
        return name in SHARED
    if within(me, "oraclewad.services"):
        return within(name, "oraclewad.services") or name in SHARED
    return not within(name, "oraclewad.services") and not within(name, "oraclectl")


def broken_rules() -> list[str]:
    broken = []
    for path in sorted([*ROOT.glob("oraclewad/**/*.py"), *ROOT.glob("oraclectl/**/*.py")]):
        me = module_name(path)
        if within(me, PROTO):
            continue
        for name in sorted(n for n in imports_of(path) if is_module_or_package(n)):
            # the bare package (from `from oraclewad import x`) is no dependency by itself
            if name not in ("oraclewad", "oraclectl") and not allowed(me, name):
                broken.append(f"{path.relative_to(ROOT)}: {me} imports {name}")
    return broken


def test_dependencies_point_one_way() -> None:
    assert broken_rules() == []


# The rule test is only as good as its reader and its verdicts: both must see a violation.
@pytest.mark.parametrize(("where", "source", "expect"), [
    ("oraclewad/services/planted.py", "from oraclewad.fleet import Fleet\n", "oraclewad.fleet"),
    ("oraclewad/services/planted.py", "from oraclewad import supervisor\n", "oraclewad.supervisor"),
    ("oraclewad/services/planted.py", "def f():\n    import oraclewad.fleet\n", "oraclewad.fleet"),
    ("oraclewad/services/planted.py", "from ..fleet import Fleet\n", "oraclewad.fleet"),
    ("oraclewad/fleet.py", "import oraclewad.services.runtime\n", "oraclewad.services.runtime"),
    ("oraclectl/main.py", "from oraclewad import errors\n", "oraclewad.errors"),
    ("oraclewad/contract.py", "from oraclewad.settings import Settings\n", "oraclewad.settings"),
    ("oraclewad/control/servicer.py", "from oraclectl.client import Client\n", "oraclectl.client"),
])
def test_a_wrong_direction_is_seen(where: str, source: str, expect: str) -> None:
    planted = ROOT / where
    assert expect in imports_of(planted, source)
    assert not allowed(module_name(planted), expect)
