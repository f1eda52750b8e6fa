"""The package is a strict stack of layers: every module imports only from layers below its own.

The order is written once, here. Every import counts, at the top of a module or inside a function (a lazy
import is no way around a layer). Packages on the same level (data and models; reporting, inference and tuning)
do not import each other, so no package cycle can form. The CLI talks to `api` (and `core`) only.

Inside a package the modules form no circle either: no module imports, directly or through others, a module that
imports it back (again counting every import, lazy ones too). A package's `__init__` may import its modules; a
module that imports from its own package (`from . import name`) imports that `__init__`, and so closes a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tudui"

# bottom to top; names on one level may not import each other
LAYERS = [
    {"core"},
    {"data", "models"},
    {"engine"},
    {"reporting", "inference", "tuning"},
    {"api"},
    {"cli"},
    {"__main__", "__init__"},  # `python -m tudui` and `import tudui`: the entry points
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def unit_of(module: str) -> str:
    """'tudui.engine.trainer' -> 'engine'; 'tudui.api' -> 'api'; 'tudui' -> '__init__'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules_in(root: Path) -> set[str]:
    return {module_name(p, root) for p in root.rglob("*.py")}


def imports_of(path: Path, root: Path, modules: set[str] | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every `import` / `from ... import` of tudui modules in the file.

    `from package import name` counts as importing the module package.name where `modules` has one (a submodule),
    else as importing the package itself."""
    modules = modules_in(root) if modules is None else modules
    mod = module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tudui"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tudui":
                continue
            if target == "tudui":  # `from . import api` at the top names modules: check each
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found += sorted({(node.lineno, f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target)
                                 for a in node.names})
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    modules = modules_in(root)
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        unit = unit_of(mod) if mod != "tudui" else "__init__"
        for line, target in imports_of(path, root, modules):
            other = unit_of(target)
            if other == unit:
                continue
            if other not in LEVEL:  # a name imported from the top package (`from tudui import x`)
                bad.append(f"{path.relative_to(root)}:{line} imports {target}, which is no layer")
            elif LEVEL[other] >= LEVEL[unit]:
                bad.append(f"{path.relative_to(root)}:{line}: {unit} (level {LEVEL[unit]}) imports {target} "
                           f"({other}, level {LEVEL[other]})")
            elif unit == "cli" and other not in ("api", "core"):
                bad.append(f"{path.relative_to(root)}:{line}: the CLI imports {target}; it calls `api` only")
    return bad


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """module -> {tudui module it imports: the line of the first such import}."""
    modules = modules_in(root)
    graph: dict[str, dict[str, int]] = {}
    for path in sorted(root.rglob("*.py")):
        edges = graph.setdefault(module_name(path, root), {})
        for line, target in imports_of(path, root, modules):
            if target in modules:
                edges.setdefault(target, line)
    return graph


def cycles(root: Path = PACKAGE) -> list[str]:
    """One circle per group of modules that import each other, as 'a (line 3) -> b (line 9) -> a': module a imports
    b at its line 3, b imports a at its line 9."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                u = stack.pop()
                group.add(u)
                if u == v:
                    break
            if len(group) > 1 or v in graph[v]:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for group in groups:  # the shortest circle through the group's first module, for the message
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            v = queue.pop(0)
            if start in graph[v]:
                circle = paths[v] + [start]
                break
            for w in sorted(graph[v]):
                if w in group and w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
        found.append(" -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(circle, circle[1:])) + f" -> {start}")
    return sorted(found)


def test_every_package_is_in_a_layer():
    units = {p.name if p.is_dir() else p.stem for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert units <= set(LEVEL), f"put {sorted(units - set(LEVEL))} into a layer in tests/test_layers.py"


def test_no_module_imports_from_its_own_level_or_above():
    assert violations() == []


@pytest.mark.parametrize("source, expected", [
    ("tudui/engine/trainer.py", "from ..reporting.plots import PlotsCallback"),
    ("tudui/data/check.py", "from ..models import create_model"),
    ("tudui/core/files.py", "def f():\n    from ..data import Split"),
    ("tudui/cli.py", "from .engine.trainer import fit"),
])
def test_the_checker_catches_an_upward_import(tmp_path, source, expected):
    """The rule can fail: the same check on a copy of the package with one forbidden import added."""
    import shutil

    copy = tmp_path / "tudui"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    target = tmp_path / source
    target.write_text(target.read_text(encoding="utf-8") + "\n" + expected + "\n", encoding="utf-8")
    found = violations(copy)
    assert len(found) == 1 and found[0].startswith(str(Path(source).relative_to("tudui")))


def test_no_import_cycle_inside_a_package():
    assert cycles() == []


@pytest.mark.parametrize("source, expected, circle", [
    # the registry importing the models that register themselves with it (what models/registry.py once did)
    ("tudui/models/registry.py", "def f():\n    from . import fast", {"tudui.models.registry", "tudui.models.fast"}),
    ("tudui/data/split.py", "from .cache import cached_split", {"tudui.data.split", "tudui.data.cache"}),
    # a module importing from its own package's __init__, which imports it
    ("tudui/data/images.py", "def f():\n    from . import Split", {"tudui.data", "tudui.data.images"}),
])
def test_the_checker_catches_an_import_cycle(tmp_path, source, expected, circle):
    """The rule can fail: a copy of the package with one import added that closes a circle."""
    import shutil

    copy = tmp_path / "tudui"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    target = tmp_path / source
    target.write_text(target.read_text(encoding="utf-8") + "\n" + expected + "\n", encoding="utf-8")
    found = cycles(copy)
    assert len(found) == 1 and all(f"{m} (line" in found[0] for m in circle), found
    assert violations(copy) == []  # inside one package: no layer is crossed
