"""The model files this user trained with on this machine: the only code a checkpoint may name without consent.

A checkpoint is loaded with `torch.load(weights_only=True)`, which runs no code. A checkpoint of your own model
still names a Python file (`arch.source`) that predict, eval, export, serve and summary import to rebuild the
network, and importing a file runs it. So tudui imports such a file only when you consented: you named it
(`--model-file`, `--model file.py:Name`), you passed `--trust-code`, or you trained with exactly these contents
here. For the last, every model file tudui trains with (train, lr-find, convert) leaves its SHA-256 here:

    $TUDUI_CACHE/trusted-code/<sha256>.json     (default ~/.cache/tudui/trusted-code/)

One small file per content hash, each written atomically: two trainings recording at once write two files (or the
same file twice with the same content), so no entry is ever lost to a race and no lock is needed. An entry that
cannot be read is ignored with a warning (the code is then refused, not run); deleting the folder forgets them all.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from .errors import TuduiError
from .files import atomic_path

SHA256 = re.compile(r"[0-9a-f]{64}")


def store_dir() -> Path:
    """$TUDUI_CACHE/trusted-code, else ~/.cache/tudui/trusted-code (tests point $TUDUI_CACHE at a temp folder)."""
    env = os.environ.get("TUDUI_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "tudui") / "trusted-code"


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def remember(path: str | Path, sha256: str) -> bool:
    """Record that this user trains with `path`, whose contents have `sha256`; False (with a warning) when the
    store cannot be written: training goes on, and using the model later asks for --model-file."""
    if not SHA256.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    entry = store_dir() / f"{sha256}.json"
    record = {"sha256": sha256, "file": str(Path(path).resolve()), "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        with atomic_path(entry) as tmp:
            tmp.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    except (OSError, TuduiError) as e:
        _warn(f"cannot record {path} as a model file you trained with in {entry.parent} ({e}); to use the "
              f"model later, name the file with --model-file")
        return False
    return True


def is_trusted(sha256: str) -> bool:
    """Whether a model file with these contents was trained with here. A store or entry that cannot be read counts
    as absent (with a warning), never as a crash and never as trust."""
    if not SHA256.fullmatch(sha256):
        return False
    folder = store_dir()
    entry = folder / f"{sha256}.json"
    try:
        raw = entry.read_bytes()
    except FileNotFoundError:
        return False
    except OSError as e:  # NotADirectoryError (the store is a file), permissions
        _warn(f"the store of model files you trained with, {folder}, cannot be read ({e}); it is treated as empty")
        return False
    try:
        ok = json.loads(raw.decode("utf-8")).get("sha256") == sha256
    except (ValueError, AttributeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        ok = False
    if not ok:
        _warn(f"ignoring {entry}: not an entry of the store of model files you trained with (corrupt); "
              "it is replaced when you train with that file again")
    return ok
