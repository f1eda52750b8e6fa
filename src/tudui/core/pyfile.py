"""Python files of the user's, named as 'path/to/file.py:Name' (`--model model.py:Tudui`, `--data data.py:train_set`).

The file is loaded under a private module name (so its `if __name__ == "__main__":` block does not run), with
its own folder on sys.path while it loads (so `from model import Tudui` inside it works as when it is run).
A model's file is loaded from its definitions only: its imports, `def`s and `class`es and plain assignments run,
its other top-level statements do not (core/toplevel.py), so rebuilding a model never reruns the training script
that defined it. A Dataset file (`--data data.py:train_set`) runs whole: its objects are made by its statements.
Any error while loading it becomes one line naming the file and the line.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from .errors import TuduiError
from .toplevel import TopLevel, scan

_SKIPPED: dict[str, TopLevel] = {}  # module name -> what its file's top level skipped (definitions-only loads)


def is_file_ref(ref: object) -> bool:
    """'path/model.py:Tudui' (or 'model.py:Tudui')."""
    return isinstance(ref, str) and ":" in ref and ref.rpartition(":")[0].endswith(".py")


def split_ref(ref: str) -> tuple[Path, str]:
    path, _, name = ref.rpartition(":")
    if not name.isidentifier():
        raise TuduiError(f"{ref}: after the ':' comes the name of a class or function in the file, e.g. model.py:Tudui")
    return Path(path).expanduser(), name


def import_file(path: Path, whole: bool = False):
    """The Python file at `path` as a module (cached per absolute path, content and `whole`, so a file is run once):
    its definitions only (core/toplevel.py), or with `whole` every statement, as `import` runs it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TuduiError(f"no such Python file: {path}")
    source = path.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    key = f"tudui_user_{path.stem if path.stem.isidentifier() else 'file'}_{digest}{'' if whole else '_defs'}"
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
        if whole:
            spec.loader.exec_module(module)
        else:  # compiled under the file's own name: tracebacks, inspect.getsource and pickling find the file
            top = scan(source, spec.origin)
            _SKIPPED[key] = top
            exec(compile(ast.Module(body=top.kept, type_ignores=[]), spec.origin, "exec", dont_inherit=True),
                 module.__dict__)
    except SyntaxError as e:
        del sys.modules[key]
        where = f"line {e.lineno}" if not e.filename or Path(e.filename).resolve() == path.resolve() else \
            f"{e.filename}, line {e.lineno}"  # a file it imports
        raise TuduiError(f"importing {path} failed ({where}): SyntaxError: {e.msg}") from None
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
        hint = skipped_hint(key, e)
        raise TuduiError(f"importing {path} failed{where}: {type(e).__name__}: {e}{hint}") from None
    finally:
        if added:
            sys.path.remove(folder)
    return module


def load_object(ref: str, what: str = "model", whole: bool = False) -> tuple[Any, Path, str]:
    """(object, file, name) for 'file.py:Name' from the file's definitions (`whole`: from running all of it);
    a missing name lists what the file defines."""
    path, name = split_ref(ref)
    module = import_file(path, whole)
    top = _SKIPPED.get(module.__name__)
    if not hasattr(module, name) and top is not None and name in top.only_skipped:
        stmt = next(s for s in top.skipped if s.lineno == top.only_skipped[name])
        rule = (f"tudui runs only a {what} file's imports, definitions and plain assignments, so that loading a "
                f"{what} never reruns a script")
        if isinstance(stmt, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):  # defined with a skipped value
            lacking = sorted({n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and n.id in top.only_skipped})
            raise TuduiError(f"{path}'s {name} ({top.quote(stmt)}) is defined with {', '.join(lacking)}, which only "
                             f"running the file makes, and {rule}: give {name} values that call nothing (build the "
                             f"rest inside it)")
        raise TuduiError(f"{path}'s {name} is made by running the file ({top.quote(stmt)}), and {rule}: name the "
                         f"class or a function that builds it, e.g. {path}:<ClassName>")
    if not hasattr(module, name):
        defined = sorted(k for k, v in vars(module).items() if not k.startswith("_") and
                         getattr(v, "__module__", None) == module.__name__)
        raise TuduiError(f"{path} has no {name!r}; it defines: {', '.join(defined) or 'nothing usable'}. "
                         f"Name the {what} as {path}:<name>")
    return getattr(module, name), path, name


def skipped_hint(module_name: str | None, error: BaseException) -> str:
    """For a NameError of a name that only a skipped top-level statement of the module's file sets: '; NAME is set
    by line N: `...`, which tudui does not run when it loads a model ...'; else ''."""
    top = _SKIPPED.get(module_name or "")
    name = getattr(error, "name", None)
    if not isinstance(error, NameError) or top is None or name not in top.only_skipped:
        return ""
    stmt = next(s for s in top.skipped if s.lineno == top.only_skipped[name])
    return (f"; {name} is set by {top.quote(stmt)}, which tudui does not run when it loads a model from its file "
            f"(only imports, definitions and plain assignments run, so a training script is never rerun): create "
            f"{name} where it is used (e.g. in __init__) or give it a value that calls nothing")


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
