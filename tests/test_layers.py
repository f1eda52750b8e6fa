"""The package is a strict stack of layers: every module imports only from layers below its own.

The order is written once, here. Every import counts, at the top of a module or inside a function (a lazy
import is no way around a layer). Packages on the same level (data and models; reporting and inference)
do not import each other, so no package cycle can form. The CLI talks to `api` (and `core`) only.
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
    {"reporting", "inference"},
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


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every `import` / `from ... import` of tudui modules in the file."""
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
            if node.module is None or target == "tudui":  # `from . import api` names modules: check each
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def violations(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        unit = unit_of(mod) if mod != "tudui" else "__init__"
        for line, target in imports_of(path, root):
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
