"""Exact resume: `tudui train --resume runs/exp-3` continues a run at its next epoch.

Design (exact by construction): a run is resumable only from an epoch boundary.
`last.pt` is written atomically when training starts (epoch 0) and after every
epoch, and holds everything the next epoch depends on: weights, optimizer,
schedule, AMP scaler, best/early-stopping state, the metrics rows so far, and
every random state (torch CPU and CUDA, numpy, Python `random`, the batch
augmentation generator, and the file DataLoader's shuffling generator; the
in-memory loader derives its shuffle from seed + epoch). A run killed in the
middle of epoch k (SIGKILL, power loss, Ctrl-C) therefore redoes epoch k from its
start and ends with bit-identical weights and metrics to an uninterrupted run on
the same machine. An interrupted partial epoch is thrown away rather than saved,
because restarting a loader mid-epoch exactly (shuffle position, worker seeds,
partial loss sums) is not possible for every loader without touching the loop.

The run's own `config.yaml` is the configuration on resume; only the options in
RESUME_MAY_CHANGE may be given again (`--epochs` only upwards).
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

import torch.distributed as dist

from ..core.checkpoint import load_checkpoint
from ..core.config import TrainConfig, load_yaml
from ..core.console import shown
from ..core.errors import TuduiError
from ..core.files import stale_temp_files
from ..models.registry import legacy_kwargs
from .distributed import is_main
from .optim import continue_schedule
from .results import write_results

# Options that may differ on resume: where things are on this machine, and how long to train.
RESUME_MAY_CHANGE = ("epochs", "device", "workers", "data_root")


class RunFinished(TuduiError):
    """`--resume` on a run with nothing left to do (not an error: the CLI prints it and exits 0)."""


def resume_paths(target: str | Path) -> tuple[Path, Path]:
    """(run directory, last.pt) for `--resume runs/exp-3` or `--resume runs/exp-3/last.pt`."""
    p = Path(target).expanduser()
    if p.is_dir():
        run_dir, ckpt = p, p / "last.pt"
    elif p.is_file() or p.suffix == ".pt":
        run_dir, ckpt = p.parent, p
    else:
        raise TuduiError(f"--resume {target}: no such run directory or checkpoint")
    if not ckpt.is_file():
        raise TuduiError(f"--resume {target}: {ckpt} not found; a run can be resumed once its training has started "
                         "(it writes last.pt before the first step)")
    return run_dir, ckpt


def _finished_message(run_dir: Path, epoch: int, epochs: int, best_epoch: int, patience: int | None) -> str | None:
    if epoch >= epochs:
        return (f"run {run_dir} already finished its {epochs} epoch(s) (best epoch {best_epoch}); nothing to resume. "
                f"To train longer: tudui train --resume {run_dir} --epochs {epochs + 5}")
    if patience is not None and best_epoch > 0 and epoch - best_epoch >= patience:
        return (f"run {run_dir} stopped early at epoch {epoch} (no better validation score, nor the same at a lower "
                f"loss, for {patience} epoch(s) after epoch {best_epoch}); nothing to resume")
    return None


def final_evaluation_done(run_dir: Path, epoch: int) -> bool:
    """Whether the run's metrics.json (written last, after the pictures) is there for the epochs last.pt holds."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # a metrics.json from before "epoch" was recorded is taken as complete; one of a shorter run (before --epochs
    # was raised) is not
    return isinstance(metrics, dict) and int(metrics.get("epoch", epoch)) == epoch


def resume_config(values: dict[str, Any]) -> TrainConfig:
    """The TrainConfig for `tudui train --resume X [flags]`: the run's config.yaml plus the flags allowed to change.

    Raises RunFinished when the run has nothing left to do, TuduiError for flags that would change the run.
    """
    values = dict(values)
    target = values.pop("resume")
    if values.pop("_config", None):
        raise TuduiError("--resume takes the configuration from the run's own config.yaml; drop --config")
    run_dir, ckpt_path = resume_paths(target)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise TuduiError(f"--resume {target}: {config_path} not found; resume needs the run directory tudui wrote")
    stored = load_yaml(config_path)
    for key in ("img_size", "channels", "mean", "std", "hflip"):  # resolved at the start: keep them exactly
        if stored.get(key) is None:
            raise TuduiError(f"{config_path} lacks the resolved `{key}`; it was not written by tudui train")
    # A run from before the evaluation crop and --augment auto existed squashed its images and chose its augmentation
    # itself: it continues that way.
    stored.setdefault("crop_pct", 0)
    stored.setdefault("augment", "flip")
    stored.setdefault("balance", "none")  # and from before --balance: no balancing
    changed = sorted(k for k, v in values.items() if k not in RESUME_MAY_CHANGE and stored.get(k) != v)
    if changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise TuduiError(f"{flags} cannot change when resuming (the run continues with its own {config_path}); "
                         f"only {', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE)} may be given "
                         "with --resume. To try other settings, start a new run with --config " + str(config_path))
    ckpt = load_checkpoint(ckpt_path)
    # and a run of a model from before one of its keywords existed (fast-mlp's pooled head) goes on with that model
    legacy, args = legacy_kwargs(ckpt["arch"]) if "arch" in ckpt else {}, stored.get("model_args") or []
    if legacy:
        stored["model_args"] = {**legacy, **args} if isinstance(args, dict) else \
            [f"{k}={json.dumps(v)}" for k, v in legacy.items()] + list(args)
    done, old_epochs = int(ckpt["epoch"]), int(stored["epochs"])
    epochs = int(values.get("epochs", old_epochs))
    if epochs < old_epochs:
        raise TuduiError(f"--epochs {epochs} is fewer than the run's {old_epochs}; --epochs may only be raised "
                         "when resuming")
    trainer = ckpt.get("trainer", {})
    msg = _finished_message(run_dir, done, epochs, int(trainer.get("best_epoch", 0)), stored.get("patience"))
    if msg and final_evaluation_done(run_dir, done):
        raise RunFinished(msg)  # (without metrics.json: the run goes on to do its final evaluation)
    known = {f for f in TrainConfig.__dataclass_fields__}
    merged = {k: v for k, v in stored.items() if k in known} | values
    # The same directory, wherever the command is run from; never a new exp<N>.
    merged |= {"project": str(run_dir.parent), "name": run_dir.name, "exist_ok": True, "resume": str(ckpt_path)}
    return TrainConfig.from_dict(merged)


# --- random states ------------------------------------------------------------------------------------------------
# torch.load(weights_only=True) accepts tensors and plain Python values only, so numpy's and Python's states are
# stored as tensors and lists rather than as the tuples of objects their get_state() functions return.

def _loader_generator(loader) -> torch.Generator | None:
    return getattr(loader, "generator", None) if isinstance(loader, torch.utils.data.DataLoader) else None


def capture_rng(run) -> dict[str, Any]:
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    loader_gen = _loader_generator(run.train_loader)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "augment": run.aug_generator.get_state(),
        "loader": loader_gen.get_state() if loader_gen is not None else None,
    }


def restore_rng(state: dict[str, Any], run) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    run.aug_generator.set_state(state["augment"])
    loader_gen = _loader_generator(run.train_loader)
    if loader_gen is not None and state["loader"] is not None:
        loader_gen.set_state(state["loader"])


def resume_state(run) -> dict[str, Any]:
    """What `Run.checkpoint()` stores beyond weights/optimizer/schedule so the next epoch is exact."""
    return {"rng": capture_rng(run), "history": list(run.history), "epochs": run.cfg.epochs}


# --- restoring a run ----------------------------------------------------------------------------------------------

def restore_run(run) -> None:
    """Load `run.cfg.resume` (a last.pt) into a freshly set-up Run and rewrite results.csv to its rows."""
    path = Path(run.cfg.resume)
    ckpt = load_checkpoint(path, map_location=run.device)
    state = ckpt.get("resume")
    if state is None:
        raise TuduiError(f"{path} has no resume state (it was written by an older tudui or is a best.pt copy); "
                         "use it as initial weights with --weights instead")
    if ckpt["data"]["classes"] != run.spec.classes:
        raise TuduiError(f"the data's classes no longer match {path} ({len(run.spec.classes)} now, "
                         f"{len(ckpt['data']['classes'])} then); resume with the same --data")
    model = getattr(run.model, "module", run.model)  # DDP-wrapped or not: weights are saved unwrapped
    model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.ema is not None:
        if "ema" not in ckpt:
            raise TuduiError(f"{path} has no EMA state; the run was not trained with --ema")
        run.ema.load_state_dict(ckpt["ema"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.epoch, run.step = int(ckpt["epoch"]), int(ckpt["step"])
    trainer = ckpt["trainer"]  # "best_top1" in checkpoints written before --best-by ranked by other figures
    run.best_score = float(trainer["best_score"] if "best_score" in trainer else trainer["best_top1"])
    run.best_epoch = int(ckpt["trainer"]["best_epoch"])
    run.history = list(state["history"])
    msg = _finished_message(run.run_dir, run.epoch, run.cfg.epochs, run.best_epoch, run.cfg.patience)
    if msg and final_evaluation_done(run.run_dir, run.epoch):
        raise RunFinished(msg)
    run.final_only = msg is not None  # trained to its end, the final evaluation never finished: that alone
    if int(state["epochs"]) == run.cfg.epochs:
        run.scheduler.load_state_dict(ckpt["scheduler"])
    else:
        # --epochs was raised: the new schedule (built for the new length) continues from the step reached.
        # A one-cycle schedule is stretched, so its learning rate jumps to where the longer cycle would be.
        continue_schedule(run.scheduler, run.step)
        if is_main():
            print(f"note: the learning-rate schedule now spans {run.cfg.epochs} epochs (was {state['epochs']}); "
                  f"lr continues at {run.optimizer.param_groups[0]['lr']:.3g}", flush=True)
    restore_rng(state["rng"], run)
    restore_rank_rng(run, state)
    if not is_main():  # under torchrun every rank restores its state; rank 0 alone writes and prints
        return
    write_results(run.run_dir / "results.csv", run.history)
    for stale in stale_temp_files(run.run_dir):  # left by a process killed while saving
        stale.unlink(missing_ok=True)
    if run.final_only:
        print(f"resuming {shown(run.run_dir)}: its training ended after epoch {run.epoch}; now its final evaluation "
              "(metrics.json, pictures)", flush=True)
        return
    print(f"resuming {shown(run.run_dir)} at epoch {run.epoch + 1}/{run.cfg.epochs} (step {run.step}) from "
          f"{shown(path)}", flush=True)


# --- per-rank augmentation streams under torchrun -----------------------------------------------------------
def gather_rank_rng(run) -> dict:
    """{'augment_ranks': [state of rank 0, rank 1, ...]} under torchrun, else {} (every rank must call it).

    Each rank has its own augmentation stream; the checkpoint written by rank 0 keeps all of them so that
    `--resume` gives every rank its own stream back. (The other random states are the same on every rank.)
    """
    if not dist.is_initialized():
        return {}
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, run.aug_generator.get_state())
    return {"augment_ranks": states}


def restore_rank_rng(run, state: dict[str, Any]) -> None:
    """After restore_rng (which restores rank 0's augmentation state): this rank's own state."""
    if not dist.is_initialized():
        return
    states = state.get("augment_ranks") or []
    rank = dist.get_rank()
    if len(states) == dist.get_world_size():
        run.aug_generator.set_state(states[rank])
        return
    if rank == 0:
        print(f"note: {run.cfg.resume} was written by {len(states) or 1} process(es), this job has "
              f"{dist.get_world_size()}: the global batch changed, so the resumed run is not an exact "
              "continuation", flush=True)
    if rank > 0:  # a fresh stream of its own rather than a copy of rank 0's
        run.aug_generator.manual_seed(run.cfg.seed + 1_000_003 * rank + run.epoch)
