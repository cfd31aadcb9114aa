"""The rooms and doors of docs/architecture.md, enforced by reading every module's imports.

Each rule says which packages a room may not import, at module level or inside a function (a
lazy import is still a door). The package is parsed, not imported, so the test costs nothing and
names the file and line of any import that breaks a rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "df_middleware"

#: (room, rooms it must not import, why) — room and targets are dotted names under df_middleware.
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("ingest", ("sync", "connectors"), "the request path cannot make an external call"),
    ("sync", ("queue", "ingest"), "handlers reach event rows only through the worker's outcome"),
    ("connectors", ("sync", "queue", "ingest"), "connectors make calls; they never decide outcomes"),
    (
        "simulators",
        ("app", "admin", "cli", "config", "connectors", "db", "ingest", "queue", "sync"),
        "the fakes import nothing from the service except shared helpers",
    ),
    (
        "consent",
        ("sync", "queue", "ingest", "simulators", "demo", "demo_run"),
        "consent decides and records; the flows that tell other systems live in sync and call it",
    ),
    (
        "agents",
        ("sync", "queue", "ingest", "cli", "simulators", "demo", "demo_run"),
        "the agent directory is read by the flows; it never runs them",
    ),
    ("app", ("simulators", "demo", "demo_run"), "the service never imports the simulators"),
    ("admin", ("simulators", "demo", "demo_run"), "the service never imports the simulators"),
    ("queue", ("simulators", "demo", "demo_run"), "the service never imports the simulators"),
    ("db", ("simulators", "demo", "demo_run"), "the service never imports the simulators"),
]


def modules_of(room: str) -> list[Path]:
    package = PACKAGE / room
    return sorted(package.rglob("*.py")) if package.is_dir() else [PACKAGE / f"{room}.py"]


def imported_names(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name a file imports (`from x import y` also as `x.y`), with its line."""
    names: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.append((node.lineno, node.module))
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return names


def crosses(name: str, target: str) -> bool:
    full = f"df_middleware.{target}"
    return name == full or name.startswith(f"{full}.")


@pytest.mark.parametrize(("room", "forbidden", "why"), RULES, ids=[rule[0] for rule in RULES])
def test_a_room_never_imports_what_it_must_not(room: str, forbidden: tuple[str, ...], why: str) -> None:
    """R-IN-6 and DESIGN's rooms and doors: `ingest` never imports `sync` or `connectors` (no
    external call on the request path); `sync` never imports `queue` (a handler settles another
    event through `HandlerResult.resolves`, applied by the worker); `connectors` stay below the
    sync layer; the simulators and the service stay apart."""
    modules = modules_of(room)
    assert modules, f"no module found for {room}"
    broken = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in modules
        for line, name in imported_names(path)
        for target in forbidden
        if crosses(name, target)
    ]
    assert broken == [], f"{room}: {why}"


def test_the_rule_reader_sees_lazy_and_aliased_imports(tmp_path: Path) -> None:
    """The scan itself: a function-level `from … import` and a `from df_middleware import x` both
    count, relative imports are not mistaken for the package's rooms."""
    source = tmp_path / "room.py"
    source.write_text(
        "def later():\n"
        "    from df_middleware.queue.operations import mark_done\n"
        "from df_middleware import sync\n"
        "from . import queue\n"
    )
    names = {name for _, name in imported_names(source)}
    assert names == {
        "df_middleware.queue.operations",
        "df_middleware.queue.operations.mark_done",
        "df_middleware",
        "df_middleware.sync",
    }
    assert crosses("df_middleware.queue.operations.mark_done", "queue")
    assert not crosses("df_middleware.queueing", "queue")
