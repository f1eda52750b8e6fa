"""Python files of the user's, named as 'path/to/file.py:Name' (`--model model.py:Tudui`, `--data data.py:train_set`).

The file is imported under a private module name (so its `if __name__ == "__main__":` block does not run), with
its own folder on sys.path while it loads (so `from model import Tudui` inside it works as when it is run).
Any error while importing it becomes one line naming the file and the line.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .errors import TuduiError


def is_file_ref(ref: object) -> bool:
    """'path/model.py:Tudui' (or 'model.py:Tudui')."""
    return isinstance(ref, str) and ":" in ref and ref.rpartition(":")[0].endswith(".py")


def split_ref(ref: str) -> tuple[Path, str]:
    path, _, name = ref.rpartition(":")
    if not name.isidentifier():
        raise TuduiError(f"{ref}: after the ':' comes the name of a class or function in the file, e.g. model.py:Tudui")
    return Path(path).expanduser(), name


def import_file(path: Path):
    """The Python file at `path` as a module (cached per absolute path and content, so a file is run once)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TuduiError(f"no such Python file: {path}")
    digest = file_sha256(path)[:12]
    key = f"tudui_user_{path.stem if path.stem.isidentifier() else 'file'}_{digest}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # before running it: classes defined there must find their module (pickling, typing)
    folder = str(path.resolve().parent)
    added = folder not in sys.path
    if added:  # `from model import Tudui` inside the file works as it does when the file is run directly
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:
        del sys.modules[key]
        raise TuduiError(f"{path} called exit({e.code}) when imported; keep its script part under "
                         "`if __name__ == \"__main__\":`") from None
    except Exception as e:  # noqa: BLE001 - any error in the user's file: say where, in one line
        del sys.modules[key]
        where = ""
        tb = e.__traceback__
        while tb is not None:
            if Path(tb.tb_frame.f_code.co_filename) == path.resolve() or tb.tb_frame.f_code.co_filename == str(path):
                where = f" (line {tb.tb_lineno})"
            tb = tb.tb_next
        raise TuduiError(f"importing {path} failed{where}: {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(folder)
    return module


def load_object(ref: str, what: str = "model") -> tuple[Any, Path, str]:
    """(object, file, name) for 'file.py:Name'; a missing name lists what the file defines."""
    path, name = split_ref(ref)
    module = import_file(path)
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if not k.startswith("_") and
                         getattr(v, "__module__", None) == module.__name__)
        raise TuduiError(f"{path} has no {name!r}; it defines: {', '.join(defined) or 'nothing usable'}. "
                         f"Name the {what} as {path}:<name>")
    return getattr(module, name), path, name


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()




MODULE_BASES = {"Module", "Sequential"}  # nn.Module, torch.nn.Module, Module, nn.Sequential, ...


def module_classes(path: str | Path) -> list[str]:
    """The classes a Python file defines at top level that subclass torch's nn.Module (directly, through nn.Sequential
    or through another such class of the file), read with `ast`: the file is not run. [] when it cannot be read."""
    try:
        tree = ast.parse(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None) for b in node.bases]
            if any(n in MODULE_BASES or n in found for n in names):
                found.append(node.name)
    return found
