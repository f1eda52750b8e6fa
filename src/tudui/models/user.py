"""Your own network: `--model path/to/model.py:Tudui`, `tudui.train(model=Tudui())` or a builder function.

The course writes `class Tudui(nn.Module)` in model.py and trains it from train.py. tudui takes that class (or
a function that returns a module) from its file, constructs it with whichever of `num_classes`, `in_channels`
and `img_size` its signature accepts (plus `--model-args key=value`), and records in the checkpoint where it
came from: the file's path (absolute, and relative to the run directory), the name, the arguments and the
file's SHA-256. Predict, eval, export, serve and summary rebuild it from there (`--model-file PATH` when the
file has moved; a changed file gives a warning). The file is loaded under a private module name from its
definitions only: imports, `def`s, `class`es and plain assignments run, its other top-level statements (a
`tudui.train(...)` at the bottom of the script that defined the class) do not (core/toplevel.py); a run whose model
file has such statements says so when it starts (`top_level_warning`).

Importing a file runs it, and a checkpoint is only data: the file a checkpoint (or an export's metadata) names is
imported only with the user's consent (`build_from_source`, the one place every such import goes through): the
user named it (`--model-file`), passed `--trust-code`, or trained with exactly these contents on this machine
(`source_record` remembers every file trained with: core/trust.py).
"""
from __future__ import annotations

import inspect
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from ..core.errors import TuduiError
from ..core.console import shown
from ..core.pyfile import file_sha256, load_object, skipped_hint, split_ref
from ..core.toplevel import needs, scan
from ..core.trust import is_trusted, remember

BUILD_ARGS = ("num_classes", "in_channels", "img_size")  # what tudui knows from the data and passes when accepted


def parse_model_args(items: list[str] | dict | None) -> dict[str, Any]:
    """['width=32', 'act=relu', 'drop=0.1'] -> {'width': 32, 'act': 'relu', 'drop': 0.1} (YAML scalars)."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    import yaml

    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.isidentifier():
            raise TuduiError(f"--model-args takes key=value pairs (e.g. width=32), got {item!r}")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def call_builder(fn: Callable, num_classes: int, in_channels: int, img_size: int, args: dict | None = None,
                 label: str | None = None) -> nn.Module:
    """Call a module class or builder function with the BUILD_ARGS it accepts plus `args`; check it is a module."""
    label = label or getattr(fn, "__name__", repr(fn))
    args = dict(args or {})
    try:  # a module class without an __init__ of its own takes no arguments (nn.Module's is *args, **kwargs)
        sig = inspect.signature(fn if not (inspect.isclass(fn) and fn.__init__ is nn.Module.__init__)
                                else lambda: None)
    except (TypeError, ValueError):
        sig = None
    known = dict(zip(BUILD_ARGS, (num_classes, in_channels, img_size)))
    if sig is not None:
        params = sig.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        unknown = [k for k in args if k not in params and not takes_any]
        if unknown:
            raise TuduiError(f"{label} takes no argument(s) {', '.join(unknown)}; its signature is {label}{sig}")
        kwargs = {k: v for k, v in known.items() if k in params or takes_any} | args
        missing = [n for n, p in params.items() if p.default is p.empty and p.kind in
                   (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs]
        if missing:
            raise TuduiError(f"{label} needs argument(s) {', '.join(missing)} that tudui cannot know; give them with "
                             f"--model-args {' '.join(m + '=...' for m in missing)} (library: model_args={{...}})")
    else:
        kwargs = args
    try:
        model = fn(**kwargs)
    except TuduiError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's constructor failed: one line naming it
        raise TuduiError(f"building {label}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) failed: "
                         f"{type(e).__name__}: {e}{skipped_hint(getattr(fn, '__module__', None), e)}") from None
    if not isinstance(model, nn.Module):
        raise TuduiError(f"{label} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def module_in_channels(model: Any) -> int | None:
    """The input channels a model built outside tudui takes: its first Conv2d's in_channels when 1 or 3, else None.

    An nn.Module given as it is is read directly; a class or builder (library) that takes no `in_channels` is built
    once on the meta device (shapes only) to read it; a name, a file or a builder taking `in_channels` is built for
    the data's channels instead (None)."""
    if callable(model) and not isinstance(model, (nn.Module, str)):
        if _takes_channels(model):
            return None
        import torch

        try:
            with torch.device("meta"):
                model = call_builder(model, 10, 3, 32)
        except Exception:  # noqa: BLE001 - building it for the data reports the problem properly
            return None
    if not isinstance(model, nn.Module):
        return None
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None and conv.in_channels in (1, 3) else None


def _takes_channels(fn: Callable) -> bool:
    """Whether a class or builder accepts `in_channels` (or any keyword): tudui then builds it for the data."""
    try:
        target = fn if not (inspect.isclass(fn) and fn.__init__ is nn.Module.__init__) else (lambda: None)
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True
    return "in_channels" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def ref_for(obj: Any) -> str | None:
    """'path/file.py:Name' for a class or function defined at the top level of a Python file, else None
    (defined in a notebook, the interpreter, or nested inside a function)."""
    target = obj if inspect.isclass(obj) or inspect.isfunction(obj) else type(obj)
    try:
        path = inspect.getsourcefile(target)
    except TypeError:
        return None
    if not path or not Path(path).is_file() or "<" in target.__qualname__ or "." in target.__qualname__:
        return None
    return f"{Path(path).resolve()}:{target.__name__}"


def source_record(ref: str, args: dict, run_dir: Path | None = None) -> dict:
    """What a checkpoint keeps to rebuild a user model: file (absolute and relative to the run), name, args, sha256.

    Called when tudui trains with (or converts to) the model, so the file's contents are also remembered as
    trusted: the checkpoint made here predicts later without --model-file or --trust-code (core/trust.py).
    """
    path, name = split_ref(ref)
    path = path.resolve()
    rel = os.path.relpath(path, run_dir.resolve()) if run_dir is not None else None
    sha = file_sha256(path)
    remember(path, sha)
    return {"path": str(path), "relpath": rel, "name": name, "args": dict(args), "sha256": sha}


def top_level_warning(source: dict) -> str | None:
    """One `warning:` line for a run's start-up when the file its model comes from has top-level statements that run
    on import (a script that trains the model it defines), which predict, eval, export, serve and summary skip when
    they rebuild the model; None for a clean file. Reads the source only (ast): cheap, and nothing of it runs."""
    path, name = source.get("path"), source.get("name")
    if not path:
        return None
    try:
        text = Path(path).read_bytes()
        top = scan(text, path)
    except (OSError, SyntaxError, ValueError):
        return None
    if not top.skipped:
        return None
    n = len(top.skipped)
    first = top.quote(top.skipped[0]) + (f" and {n - 1} more" if n > 1 else "")
    missing = needs(text, path, name, top)
    fails = ""
    if missing:
        where = ", ".join(f"{k} (line {line})" for k, line in missing.items())
        it = "it" if len(missing) == 1 else "them"
        fails = (f"; {name} uses {where}, set only by such a statement, so rebuilding it will fail: create {it} "
                 f"inside {name} or give {it} a value that calls nothing")
    return (f"warning: {shown(path)} runs {n} top-level statement(s) when imported ({first}); predict, eval, export, "
            f"serve and summary rebuild {name} from it running only its imports, definitions and plain assignments, "
            f"so they skip {'it' if n == 1 else 'them'}{fails}. Keep a script's own work under "
            f"`if __name__ == \"__main__\":`, or export the model (`tudui export RUN --format onnx`) to use it "
            f"without its file")


def locate_source(source: dict, model_file: str | Path | None = None, base_dir: str | Path | None = None) -> Path:
    """The user's file now: --model-file, else relative to the checkpoint's run directory, else where it was."""
    if model_file is not None:
        p = Path(model_file).expanduser()
        if not p.is_file():
            raise TuduiError(f"--model-file {model_file}: no such file")
        return p
    candidates = []
    if source.get("relpath") and base_dir is not None:
        candidates.append(Path(base_dir) / source["relpath"])
    if source.get("path"):
        candidates.append(Path(source["path"]))
    for c in candidates:
        if c.is_file():
            return c
    if not source.get("path"):  # trained from an object defined in a notebook or the interpreter
        raise TuduiError(f"this model's code, {source['name']}, was not defined in a file when it was trained; name a "
                         f"file that defines it with --model-file PATH, or export the model where it was trained")
    raise TuduiError(f"this model's code, {source['name']} in {source['path']}, is not there any more; point at it "
                     f"with --model-file PATH. To use a model without its Python file, export it where the file "
                     f"exists: `tudui export RUN --format onnx` (or torchscript) needs no code to run")


def check_consent(path: Path, name: str) -> None:
    """Refuse to import `path`, named by a model file rather than by the user, unless the user trained with exactly
    these contents here: a checkpoint from anyone could otherwise run any code by naming a file beside it."""
    if is_trusted(file_sha256(path)):
        return
    path = path.resolve()  # the file that would run, without the run directory's ../..
    raise TuduiError(f"not running {path} ({name}), the Python file this model names: you have not named it nor "
                     f"trained with it here, and a model file can name any code. Read it, then pass --model-file "
                     f"{shlex.quote(str(path))} (or --trust-code if you trust whoever made the model)")


def build_from_source(source: dict, num_classes: int, in_channels: int, img_size: int,
                      model_file: str | Path | None = None, base_dir: str | Path | None = None,
                      trust_code: bool = False) -> nn.Module:
    """Rebuild a checkpoint's user model from its file (weights are loaded by the caller).

    The file is imported only with consent: `model_file` (the user named it), `trust_code`, or contents the user
    trained with here (check_consent); otherwise a TuduiError names the file and how to consent.
    """
    path = locate_source(source, model_file, base_dir)
    if model_file is None and not trust_code:
        check_consent(path, source["name"])
    if source.get("sha256") and file_sha256(path) != source["sha256"]:
        print(f"warning: {path} has changed since the model was trained (its SHA-256 differs); rebuilding "
              f"{source['name']} from the file as it is now", file=sys.stderr)
    obj, _, name = load_object(f"{path}:{source['name']}")
    return call_builder(obj, num_classes, in_channels, img_size, source.get("args"), label=name)
