"""Checkpoints: atomic writes, safe loads, and everything needed to use the model.

A checkpoint is a dict of plain types and tensors (never a pickled model), read
with `torch.load(weights_only=True)` so a file from a stranger cannot run code.
Before that, `check_archive` refuses files that are not torch.save archives and
archives that unpack to far more than they weigh; after it, `check_arch` and
`check_data` refuse entries of the wrong type or of insane size (inference/formats.py
then compares the declared sizes with the weights' shapes before building anything):
  format, format_version   identify a tudui checkpoint
  model                    state_dict (saved from the unwrapped module: no `module.` prefix, standard layout)
  arch                     {name, num_classes, in_channels, img_size, kwargs} for models' build_model, and for
                           your own model the `source` record of its Python file (models/user.py)
  data                     DataSpec: classes, img_size, channels, mean, std, hflip, tta, crop_pct,
                           pretrained_cfg (timm weights' preprocessing record, or null)
  versions                 tudui, torch, torchvision, ... that wrote it
Training checkpoints (engine/trainer.py `Run.checkpoint`) add:
  epoch, step              epochs and optimisation steps completed
  optimizer, scheduler, scaler, trainer   state to resume training exactly (trainer: best_score, best_epoch)
  resume                   RNG states and the metrics rows so far (engine/resume.py)
  ema                      the weights' moving average, in last.pt with --ema (best.pt holds it as `model`)
  metrics, config          the last epoch's metrics row and the run's TrainConfig as plain values
"""
from __future__ import annotations

import math
import os
import pickle
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import MAX_IMG_SIZE
from .errors import TuduiError
from .files import atomic_path, versions

FORMAT = "tudui.checkpoint"
FORMAT_VERSION = 1
INSTALL_EXPORT = "pip install 'tudui[export]'"


def import_safetensors():
    """safetensors.torch, or a TuduiError saying how to install it (an optional dependency)."""
    try:
        import safetensors.torch
    except ImportError:
        raise TuduiError(f"reading or writing .safetensors needs the safetensors package: {INSTALL_EXPORT}") from None
    return safetensors.torch


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write `payload` to `path` atomically (files.atomic_path): a crash leaves the old file or the new one."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
        if os.environ.get("TUDUI_TEST_SLOW_SAVE"):  # test hook: seconds to wait before the rename (kill-during-save)
            time.sleep(float(os.environ["TUDUI_TEST_SLOW_SAVE"]))


def make_checkpoint(model: torch.nn.Module, arch: dict, data: dict, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict every writer uses: format tag, weights in the standard layout, arch, DataSpec, extras."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            # contiguous: channels-last weights are saved in the standard layout every reader expects
            "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "arch": arch, "data": data, "versions": versions(), **extra}


class PickledObjects(TuduiError):
    """The file holds pickled Python objects (e.g. torch.save(model)), which weights-only loading refuses."""


# A torch.save file is a zip archive whose entries are stored uncompressed, so what torch.load allocates is about the
# file's size. An archive re-zipped with compression can hold far more than it weighs (200 MB of zeros deflate to
# 0.2 MB): its entries may add up to at most INFLATE_RATIO x the file's size plus INFLATE_SLACK_MB, which any
# honestly compressed checkpoint meets (float weights deflate by less than 1.5:1).
INFLATE_RATIO = 4
INFLATE_SLACK_MB = 64
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_MAGIC = b"\x80"  # pickle protocol 2+: the legacy (pre-zip) torch.save format starts with it


def _first_line(e: BaseException, limit: int = 160) -> str:
    """`e` as 'Type: first line', cut at a word boundary; torch's advice about weights_only is left out (it names
    the wrong cause, and loading with weights_only=False would run the file's code)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "weights_only" in text or "weights only" in text.lower():
        text = ""
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def check_archive(path: Path) -> None:
    """Refuse a file that is not a torch.save file, or a zip archive that inflates to far more than its size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as z:
                total = sum(i.file_size for i in z.infolist())  # declared sizes, which torch's reader enforces
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise TuduiError(f"{path} is a damaged zip archive ({_first_line(e)}); it may be truncated: copy or "
                             "save it again") from None
        allowed = INFLATE_RATIO * size + INFLATE_SLACK_MB * 2**20
        if total > allowed:
            raise TuduiError(f"{path} unpacks to {total / 2**20:,.0f} MiB from {size / 2**20:,.1f} MiB on disk "
                             f"(over {INFLATE_RATIO}x its size + {INFLATE_SLACK_MB} MiB); torch.save writes "
                             "uncompressed archives, so it was re-packed: refusing to load it")
    elif not head.startswith(PICKLE_MAGIC):
        raise TuduiError(f"{path} is not a readable PyTorch file: torch.save writes a zip archive, and this file "
                         f"starts with bytes {head.hex(' ')} (neither a zip archive nor a pickle)")


def pickled_class(path: Path) -> tuple[str, str] | None:
    """(module, name) of the first class a torch.save pickle names (a whole model's own class), read from the
    opcodes without unpickling anything; None when there is none or the file is not such an archive."""
    import pickletools

    try:
        with zipfile.ZipFile(path) as z:
            entry = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            data = z.read(entry) if entry else b""
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                return module, name
            if op.name == "STACK_GLOBAL" and len(strings) >= 2:
                return strings[-2], strings[-1]
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - any damage: no guess
        return None
    return None


def _outputs(state: dict) -> int | None:
    """The output count of a state_dict's last layer (its last tensor's first dimension), usually the classes."""
    last = list(state.values())[-1]
    return int(last.shape[0]) if last.dim() in (1, 2) else None


def convert_command(path: Path, pickled: bool = False, outputs: int | None = None) -> str:
    """A complete `tudui convert` command for a file that is weights or a pickled model, with what is known filled
    in (the pickled model's class, the classes its last layer gives) and a word on each placeholder left."""
    model, notes = "MODEL", []
    found = pickled_class(path) if pickled else None
    if found and not found[0].startswith(("torch", "collections", "builtins")):
        module, name = found
        model = f"{module.rsplit('.', 1)[-1]}.py:{name}" if module != "__main__" else f"FILE.py:{name}"
        if module == "__main__":
            notes.append(f"FILE.py: the file that defines class {name}")
    else:
        notes.append("MODEL: the architecture the weights belong to, a name `tudui models` lists or your "
                     "file.py:ClassName")
    classes = f"--num-classes {outputs}" if outputs else "--num-classes N"
    if not outputs:
        notes.append("N: the number of classes, or --classes A B ... in output order")
    out = path.with_suffix(".pt") if path.suffix != ".pt" else path.with_name(path.stem + "-tudui.pt")
    cmd = f"`tudui convert {path}{' --trust' if pickled else ''} --model {model} {classes} --out {out}`"
    return cmd + (f" ({'; '.join(notes)})" if notes else "")


def torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    if not path.is_file():
        raise TuduiError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise TuduiError(f"{path} is empty (0 bytes); it is not a checkpoint")
    check_archive(path)
    try:
        with warnings.catch_warnings():
            # the weights-only unpickler warns about odd pickle protocols in damaged files; the error below says it
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # not a pickle of objects at all: garbage or another format
            raise TuduiError(f"{path} is not a readable PyTorch file (its content is not what torch.save writes)") from e
        raise PickledObjects(
            f"{path} contains pickled Python objects (for example a whole model saved with torch.save(model)); "
            "tudui loads only weights, because unpickling can run arbitrary code. If you trust the file, "
            f"convert it: {convert_command(path, pickled=True)}") from e
    except MemoryError:
        raise TuduiError(f"{path} needs more memory to load than this machine has free") from None
    except Exception as e:  # noqa: BLE001 - damaged files raise anything from KeyError to struct.error in torch.load
        raise TuduiError(f"{path} is not a readable PyTorch file ({_first_line(e)}); it is damaged or was not "
                         "written by torch.save") from e


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_data(d: Any, where: str | Path, entry: str = "data") -> None:
    """A DataSpec as a file stores it (a checkpoint's `data`, an export's metadata): types and sane values, so a
    hand-edited or hostile file is refused with one line before anything is built, allocated or divided by it."""
    def bad(what: str) -> TuduiError:
        return TuduiError(f"{where} is not a usable tudui model: {what}")

    if not isinstance(d, dict):
        raise bad(f"'{entry}' should be a dict (classes, img_size, channels, mean, std), got {type(d).__name__}")
    classes = d.get("classes")
    if not isinstance(classes, (list, tuple)) or not classes:
        raise bad(f"'{entry}.classes' should be a non-empty list of class names, got {type(classes).__name__} "
                  f"{classes!r:.40}")
    odd = next((c for c in classes if not isinstance(c, str)), "")
    if not isinstance(odd, str):
        raise bad(f"'{entry}.classes' should hold class names (str), but holds a {type(odd).__name__}: {odd!r:.40}")
    size, channels = d.get("img_size"), d.get("channels")
    if not _is_int(size) or not 1 <= size <= MAX_IMG_SIZE:
        raise bad(f"'{entry}.img_size' should be a side in pixels in [1, {MAX_IMG_SIZE}], got {size!r}")
    if channels not in (1, 3) or not _is_int(channels):
        raise bad(f"'{entry}.channels' should be 1 (greyscale) or 3 (RGB), got {channels!r}")
    for k in ("mean", "std"):
        v = d.get(k)
        if (not isinstance(v, (list, tuple)) or len(v) != channels
                or not all(_is_number(x) and math.isfinite(x) for x in v)):
            raise bad(f"'{entry}.{k}' should be {channels} finite number(s), one per channel, got {v!r}")
    if not all(x > 0 for x in d["std"]):
        raise bad(f"'{entry}.std' is {list(d['std'])}: each must be > 0, since every pixel is divided by it")
    crop = d.get("crop_pct")
    if crop is not None and (not _is_number(crop) or not 0 < crop <= 1 or size / crop > 2 * MAX_IMG_SIZE):
        raise bad(f"'{entry}.crop_pct' should be in (0, 1] with img_size / crop_pct at most {2 * MAX_IMG_SIZE} px "
                  f"(the side images are resized to), got {crop!r}")
    if d.get("pretrained_cfg") is not None and not isinstance(d["pretrained_cfg"], dict):
        raise bad(f"'{entry}.pretrained_cfg' should be a dict (where the preprocessing came from) or null, got "
                  f"{type(d['pretrained_cfg']).__name__}")
    for k in ("hflip", "tta"):
        if k in d and not isinstance(d[k], bool):
            raise bad(f"'{entry}.{k}' should be true or false, got {d[k]!r}")


def check_arch(a: Any, where: str | Path) -> None:
    """An `arch` entry (checkpoint or export) has the types and sane sizes build_model needs."""
    def bad(what: str) -> TuduiError:
        return TuduiError(f"{where} is not a usable tudui model: {what}")

    if not isinstance(a, dict):
        raise bad(f"'arch' should be a dict (name, num_classes, in_channels, img_size, kwargs), got {type(a).__name__}")
    if not isinstance(a.get("name"), str):
        raise bad(f"'arch.name' should be a model name, got {a.get('name')!r}")
    for k, hi in (("num_classes", None), ("in_channels", 3), ("img_size", MAX_IMG_SIZE)):
        v = a.get(k)
        if not _is_int(v) or v < 1 or (hi is not None and v > hi):
            raise bad(f"'arch.{k}' should be an int in [1, {hi or 'inf'}], got {v!r}")
    if not isinstance(a.get("kwargs", {}), dict):
        raise bad(f"'arch.kwargs' should be a dict, got {type(a.get('kwargs')).__name__}")


def _check_types(ckpt: dict, path: Path) -> None:
    """The entries readers of a checkpoint index have the types they expect (one line naming the first that does
    not), so a hand-edited or foreign file is refused here instead of failing somewhere deep inside."""
    if "model" in ckpt:
        m = ckpt["model"]
        if not isinstance(m, dict):
            raise TuduiError(f"{path} is not a usable tudui model: 'model' should be a state_dict (layer names to "
                             f"tensors), got {type(m).__name__}")
        for k, v in m.items():
            if not isinstance(k, str) or not isinstance(v, torch.Tensor):
                raise TuduiError(f"{path} is not a usable tudui model: 'model' should map layer names to tensors, "
                                 f"but {k!r} holds a {type(v).__name__}")
    if "arch" in ckpt:
        check_arch(ckpt["arch"], path)
    if "data" in ckpt:
        check_data(ckpt["data"], path)


def run_file(path: Path, prefer: str = "best") -> Path:
    """A run directory's best.pt (or with prefer="last" its last.pt; the other when the preferred one is missing);
    any other path as it is."""
    if not path.is_dir():
        return path
    names = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
    for name in names:
        if (path / name).is_file():
            return path / name
    raise TuduiError(f"{path} is a folder without best.pt or last.pt")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", prefer: str = "best") -> dict[str, Any]:
    """Load a tudui checkpoint onto `map_location` (CPU by default: GPU-saved files load anywhere).

    A run directory means its best.pt (the weights to use), or with prefer="last" its last.pt (the state to
    resume from); the other one is taken when the preferred one is missing.
    """
    path = run_file(Path(path), prefer)
    ckpt = torch_load(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise TuduiError(f"{path} holds plain weights (a state_dict), not a tudui checkpoint, which also records "
                             "the architecture, classes and input size; make one: "
                             f"{convert_command(path, outputs=_outputs(ckpt))}; or start a training from these "
                             f"weights: `tudui train --weights {path} ...`")
        raise TuduiError(f"{path} is not a tudui checkpoint (tudui train writes them: runs/NAME/best.pt)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise TuduiError(f"{path} was written by a newer tudui (format {ckpt['format_version']}); upgrade tudui")
    _check_types(ckpt, path)
    ckpt["path"] = str(path)
    return ckpt


def _tudui_entry(path: Path, key: str) -> dict | None:
    """Entry `key` (a dict) of the tudui checkpoint at `path`; None for any other file (a state_dict, .safetensors)."""
    if not path.is_file() or path.suffix == ".safetensors":
        return None
    obj = torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT and isinstance(obj.get(key), dict):
        return obj[key]
    return None


def weights_data(path: str | Path) -> dict | None:
    """The DataSpec record (input size, channels, mean/std) of a tudui checkpoint used as --weights; None for any other
    weights file (a state_dict knows nothing of the images it was trained on)."""
    return _tudui_entry(Path(path), "data")


def weights_arch(path: str | Path) -> dict | None:
    """The `arch` record of a tudui checkpoint (or a run directory: its best.pt) used as --weights; None for any other
    weights file."""
    return _tudui_entry(run_file(Path(path)), "arch")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a weights file: .safetensors, a plain state_dict, a tudui checkpoint (or a run directory: its
    best.pt), or {'state_dict': ...}."""
    path = run_file(Path(path))
    if not path.is_file():
        raise TuduiError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return import_safetensors().load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, OSError, ...
            raise TuduiError(f"{path} is not a readable .safetensors file ({_first_line(e)}); it is damaged or "
                             "truncated") from None
    obj = torch_load(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TuduiError(f"{path} holds no state_dict (a mapping of layer names to tensors)")
    return obj
