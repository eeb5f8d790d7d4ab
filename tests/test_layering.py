"""The layering of DESIGN.md, kept: imports point down only, and no two packages import each other.

Top to bottom: `cli`/`server` → the facade (`engine`) → `ops` → `realtime` → `audiences` →
`sync` → `destinations` and `events` → `identity` and `config` → `segments` and `store`.
A module may import its own package and anything ranked lower; packages of one rank may import
each other one way only. The test reads the source with `ast`, so it sees lazy imports inside
functions too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import cohortsync

SOURCE = Path(cohortsync.__file__).parent

# Lower numbers sit higher. Modules outside a package (cli.py, render.py, …) are named alone.
RANK = {
    "cli": 0,
    "cli_errors": 0,  # how the CLI words a failure
    "commands": 0,  # the commands beyond cli.py, one module per family
    "server": 0,
    "render": 0,  # the CLI's pictures
    "engine": 1,  # the facade
    "ops": 2,
    "demo": 2,
    "realtime": 3,
    "audiences": 4,
    "sync": 5,
    "destinations": 6,
    "events": 6,
    "identity": 7,
    "config": 7,
    "segments": 8,
    "store": 8,
    "errors": 9,  # error classes every layer raises
    "moments": 9,  # instants as microseconds and back
    "charts": 9,  # inline SVG charts for the dashboard and the HTML report
}


def _imports(root: Path = SOURCE) -> list[tuple[str, int, str, str]]:
    """(file, line, importing part, imported part) for every import between two parts."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        part = relative.parts[0].removesuffix(".py")
        if part in ("__init__", "__main__"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                pieces = name.split(".")
                if pieces[0] != "cohortsync" or len(pieces) < 2 or pieces[1] == part:
                    continue  # another library, the package root (`__version__`), or itself
                found.append((str(relative), node.lineno, part, pieces[1]))
    return found


def test_every_part_has_a_rank() -> None:
    parts = {p.name.removesuffix(".py") for p in SOURCE.iterdir() if not p.name.startswith("_")}
    parts.discard("py.typed")
    assert parts <= set(RANK), f"give {sorted(parts - set(RANK))} a rank in this test"


def _upward(root: Path = SOURCE) -> list[str]:
    return [
        f"{file}:{line}: {part} imports {target}, which sits above it"
        for file, line, part, target in _imports(root)
        if RANK[target] < RANK[part]
    ]


def test_imports_point_down_only() -> None:
    assert _upward() == []


def test_parts_of_one_rank_import_each_other_one_way() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for _, _, part, target in _imports():
        if RANK[target] == RANK[part]:
            edges[part].add(target)
    cycles = sorted(f"{a} <-> {b}" for a in edges for b in edges[a] if a in edges.get(b, ()))
    assert cycles == []


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path: Path) -> None:
    """Lazy imports are where upward ones like to hide."""
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "probe.py").write_text(
        "from cohortsync.segments.ast import Segment\n"
        "def f():\n    from cohortsync.engine import Engine\n"
    )
    assert _upward(tmp_path) == [
        "segments/probe.py:3: segments imports engine, which sits above it"
    ]


# What the skins may import from cohortsync: the CLI and the server hold no logic of their own,
# so they reach everything else through the facade. Each entry says why it is there.
SKIN_IMPORTS = {
    "engine": "the facade: every command and route calls it",
    "config": "the project file: `init` writes it, commands find it, routes read its write keys",
    "errors": "the error classes a command raises for a bad option",
    "cli_errors": "how the CLI words a failure",
    "commands": "the commands beyond cli.py, themselves skin",
    "render": "the CLI's pictures of what the engine returns",
    "server": "the app `serve` runs, and its limits",
    "events.models": "the message records and the size limits the ingest routes enforce",
    "identity.log_scrub": "the logger that keeps identifiers and secrets out of every log line",
}


def _skin_imports(root: Path = SOURCE) -> list[tuple[str, int, str]]:
    """(file, line, module) for every cohortsync module cli.py, commands/ or server/ imports."""
    found = []
    skin = [root / "cli.py", *sorted((root / "commands").rglob("*.py"))]
    for path in [*skin, *sorted((root / "server").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [(str(path.relative_to(root)), node.lineno, n) for n in names]
    return found


def test_the_cli_and_the_server_import_only_the_facade_and_what_it_speaks() -> None:
    def allowed(module: str) -> bool:
        pieces = module.split(".")
        if pieces[0] != "cohortsync" or len(pieces) < 2:
            return True  # another library, or the package root (`__version__`)
        inside = ".".join(pieces[1:])
        return any(inside == a or inside.startswith(a + ".") for a in SKIN_IMPORTS)

    wrong = [f"{f}:{line}: {m}" for f, line, m in _skin_imports() if not allowed(m)]
    assert wrong == [], "go through cohortsync.engine instead"
