"""Started by torchrun from test_ddp.py: `tudui train ARGS` on this rank, plus a record of what the rank did.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py MODE OUT_DIR TRAIN_ARGS...

MODE `train` writes OUT_DIR/rank<R>.json: the training indices of each epoch, the class names in the order the
rank trained with, a hash of the parameters at the end of training (before the best weights are reloaded), the
evaluation summaries the rank returned, and the names of the process's threads once `tudui train` has returned
(the process group's gloo threads must be gone then: one left into interpreter shutdown can abort the rank). MODE `fail` makes rank 1 fail with a TuduiError while loading its data; MODE
`hang` makes it hang there (it writes OUT_DIR/rank1-hangs, the time.time() it started, and sleeps). MODE `several`
trains several runs in one job (each torchrun start costs seconds of two processes importing torch): TRAIN_ARGS is
one JSON list of argument lists, trained in order in one process group held across them; the record's `runs` maps
each run folder's name to its parameter hash.
The hooks wrap tudui's own functions from outside, so the product carries no test-only code.
"""
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from tudui import cli
from tudui.engine import setup as engine_setup, trainer
from tudui.core.errors import TuduiError

mode, out, train_args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
rank = int(os.environ["RANK"])
record: dict = {"rank": rank, "world_size": int(os.environ["WORLD_SIZE"]), "indices": []}

if mode == "fail" and rank == 1:
    def broken_data(*args, **kwargs):
        raise TuduiError("the data on rank 1 is unreadable")

    engine_setup.build_data = broken_data

if mode == "hang" and rank == 1:
    def hanging_data(*args, **kwargs):
        out.mkdir(parents=True, exist_ok=True)
        (out / "rank1-hangs").write_text(repr(time.time()))
        time.sleep(3600)  # ended by torchrun once rank 0 gives up waiting

    engine_setup.build_data = hanging_data

real_setup, real_finish = trainer.setup, trainer._finish


def setup(cfg, callbacks=None):
    run = real_setup(cfg, callbacks)
    loader, real_set_epoch = run.train_loader, run.train_loader.set_epoch

    def set_epoch(epoch):  # the trainer calls this at the start of every epoch
        real_set_epoch(epoch)
        record["indices"].append(loader._indices()[: len(loader) * loader.batch_size].tolist())

    loader.set_epoch = set_epoch
    record["ddp"] = run.ddp is not None
    record["classes"] = list(run.spec.classes)  # the class order this rank trains with
    return run


def finish(run, criterion):
    h = hashlib.sha256()
    for name, p in run.model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    record["param_sha256"] = h.hexdigest()
    result = real_finish(run, criterion)
    record.setdefault("runs", {})[result.run_dir.name] = record["param_sha256"]
    record.update(val=result.val, test=result.test, run_dir=str(result.run_dir))
    return result


trainer.setup, trainer._finish = setup, finish
if mode == "several":
    import torch._dynamo  # noqa: F401  before the group, as tudui does (engine/distributed._import_dynamo)
    import torch.distributed as dist

    dist.init_process_group("gloo")  # held across the runs: tudui joins a group that exists instead of making one
    rc = max(cli.main(["train", *args]) for args in json.loads(train_args[0]))
    dist.destroy_process_group()
else:
    rc = cli.main(["train", *train_args])
tasks = Path("/proc/self/task")
record["threads"] = sorted((t / "comm").read_text().strip() for t in tasks.iterdir()) if tasks.is_dir() else None
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{rank}.json").write_text(json.dumps(record))
sys.exit(rc)
