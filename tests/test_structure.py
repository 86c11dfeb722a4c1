"""The shape ARCHITECTURE.md promises, checked on every run: rar/ is its rooms (LAYERS), no
import runs to a higher room or in a cycle, no function over 80 lines, no module over 500, no
formatter exemption, every package exports its API, and every module is in the one module table
(README and docs/ link to it).

Read from the source with `ast` (nothing is imported, except to check the exports), so a
violation names its file and line. Imports inside functions count too: a lazy import still ties
two modules together. Each check is one test that lists every offender at once.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rar"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (packages by their __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The rar modules `name` imports, anywhere in its file, resolved to known modules."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from rar import x` imports the module rar.x when there is one.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_inside_rar():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    # A package's __init__ importing its own submodules is how a package exports its API;
    # the submodules importing each other is what must stay acyclic.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_module_over_500_lines():
    long = []
    for path in MODULES.values():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(PACKAGE.parent)} {lines}")
    assert not long, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(long)


def test_no_function_over_80_lines():
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} {lines}"
                    )
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def _documented(page: Path, heading: str) -> set[str]:
    """The paths named in the first column of the first table under `heading`."""
    text = page.read_text()
    section = text[text.index(heading) :]
    lines = section.splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    named = set()
    for row in rows:
        first = row.split("|")[1]
        named |= {part.strip("` ") for part in first.split(",") if "`" in part}
    return named


def test_the_module_table_names_every_module():
    """ARCHITECTURE.md, the one module table, names each module, or its package folder."""
    named = _documented(PACKAGE.parent / "ARCHITECTURE.md", "## Modules (rar/)")
    missing = []
    for path in MODULES.values():
        if path.name in ("__init__.py", "__main__.py") and path.parent == PACKAGE:
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        folders = [f"{parent.as_posix()}/" for parent in path.relative_to(PACKAGE).parents][:-1]
        if not {rel, *folders} & named:
            missing.append(f"does not name {rel}")
    stale = [n for n in sorted(named) if not (PACKAGE / n).exists()]
    missing += [f"names {n}, which no longer exists" for n in stale]
    assert not missing, "ARCHITECTURE.md's module table:\n" + "\n".join(missing)


# The rooms at the top of rar/, lowest layer first (ARCHITECTURE.md draws them). A module
# imports from its own room, a room of its own layer, or one below: never upward.
LAYERS = (
    ("files", "settings"),
    ("runtime", "experiments"),
    ("model", "data"),
    ("demo",),
    ("evaluation",),
    ("training",),
    ("sampling",),
    ("report",),
    ("ops",),
    ("cli",),
)
LEVEL = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}


def _room(module: str) -> str:
    return module.split(".")[1]


def test_the_top_of_rar_is_its_rooms():
    """About a dozen entries, each a room of LAYERS: a new module joins a room (or a new room
    joins LAYERS, deliberately, with its place in the order)."""
    entries = {p.stem for p in PACKAGE.iterdir() if p.name not in ("__init__.py", "__pycache__")}
    assert entries == set(LEVEL), (
        f"rar/ holds {sorted(entries - set(LEVEL))} outside LAYERS; "
        f"LAYERS names {sorted(set(LEVEL) - entries)} that rar/ lacks"
    )


def test_no_module_imports_a_room_above_its_own():
    upward = []
    for name, path in MODULES.items():
        if name == "rar":
            continue
        for target in sorted(_imports(name, path)):
            if target != "rar" and LEVEL[_room(target)] > LEVEL[_room(name)]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {target}")
    assert not upward, "imports from a higher room:\n" + "\n".join(upward)


def test_every_package_exports_its_api():
    """Each package's __init__ names what it offers in `__all__`."""
    silent = []
    for name, path in MODULES.items():
        if path.name != "__init__.py" or name == "rar":
            continue
        tree = ast.parse(path.read_text())
        assigned = {
            n.id
            for node in tree.body
            if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            for n in ast.walk(t)
            if isinstance(n, ast.Name)
        }
        if "__all__" not in assigned:
            silent.append(str(path.relative_to(PACKAGE.parent)))
    assert not silent, "packages without __all__:\n" + "\n".join(silent)


def test_no_formatter_exemptions():
    """A formatter exemption hides a line from the formatter, the way to squeeze a function
    under the line limit: none in the package, its tests or its tools."""
    root = PACKAGE.parent
    files = [*MODULES.values(), *(root / "tests").glob("*.py"), *(root / "tools").glob("*.py")]
    markers = ("# fmt: " + "skip", "# fmt: " + "off")  # split, so this file does not match
    marked = [
        f"{path.relative_to(root)}:{i}"
        for path in files
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if line.rstrip().endswith(markers)
    ]
    assert not marked, "formatter exemptions:\n" + "\n".join(marked)


def test_every_exported_name_resolves():
    """A package's `__all__` is its API: each name imports (lazy exports name a real module
    and a real attribute)."""
    import importlib

    broken = []
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name != "rar":
            package = importlib.import_module(name)
            broken += [f"{name}.{n}" for n in package.__all__ if not hasattr(package, n)]
    assert not broken, "exported but missing:\n" + "\n".join(broken)
