"""Photos on a CPU: tudui's photo path against the course's routine and a plain loop, side by side in one run.

No real photo folder and no ImageNet weights can be had offline, so both are made here from real data:
  - the photo folder: Fashion-MNIST *training* items up-scaled to RGB JPEGs whose sides are 256 to 500 px (bicubic,
    a random tint each, quality 90), 10 classes, train/ (270 per class) and val/ (30 per class): 3,000 files;
  - the "pretrained" backbone: the same architecture trained by tudui on the 10,000 Fashion-MNIST *test* images at
    64 px (RGB, a few epochs), its head removed. No image is in both. Both sides of every comparison load the same
    file, so the weights only decide the accuracy level, never the comparison.

Comparisons (each model: resnet18 at 224 px, and mobilenet_v3_small):
  1. the course's way (ImageFolder + Resize(256)/RandomCrop(224)/ToTensor/Normalize + DataLoader(batch 64,
     shuffle, num_workers=0), the backbone frozen, a new head, the hand-written loop with SGD lr 0.01 momentum
     0.9, validation after every epoch) against `tudui.train(..., freeze_backbone=True)` with its defaults
     (batch 64, pictures and TensorBoard on, a fresh decoded-image cache: decoding is counted): wall time of 10
     epochs and validation top-1 after the last;
  2. start-up: seconds from calling `tudui.train` to its first epoch (after set-up) with an empty cache, then again
     with the cache the first call wrote (full fine-tuning config);
  3. full fine-tuning images/s (steps 3..N, batch 32) of tudui's loop against a plain hand-written loop with the
     same model, batch, optimiser and preloaded 224-px tensors: first both as written (tudui's defaults: bf16
     autocast where the CPU has it, channels-last; the plain loop: fp32), then like for like (tudui --amp off
     --no-channels-last);
  4. peak resident memory (the child process's own high-water mark, VmHWM) training mobilenet_v3_small for one epoch on the folder
     with --memory-limit-mb set to half its decoded training size, against the same run on 64 images (the model's
     own footprint) and with the default limit (the decoded data held).

    .venv/bin/python benchmarks/photos.py [--quick] [--epochs 10] [--models resnet18 mobilenet_v3_small]
                                          [--workdir DIR]
(a kept --workdir holds the photo folder and the backbones for the next run: --quick's under DIR/quick)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import numpy as np
import torch
import torch.nn as nn
import torchvision
from PIL import Image
from torchvision import transforms as T

import tudui
from tudui.data import IMAGENET_MEAN, IMAGENET_STD
from tudui.engine.callbacks import Callback
from tudui.models.surgery import head_path

TARGETS = {"speed": 8.0, "startup": 10.0, "throughput": 1.0}  # issue 15


# --- data and weights ---------------------------------------------------------------------------------------------------
def make_folder(root: Path, per_class: tuple[int, int], sides: tuple[int, int], seed: int = 0) -> Path:
    """train/ and val/ class folders of RGB JPEGs made from Fashion-MNIST training items (see the docstring)."""
    marker = root / f".made-{per_class[0]}-{per_class[1]}-{sides[0]}-{sides[1]}"
    if marker.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    images, targets = C.load_fmnist(True)
    rng = np.random.default_rng(seed)
    jobs = []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(targets == c))[: sum(per_class)]
        for k, i in enumerate(idx):
            split = "train" if k < per_class[0] else "val"
            w = int(rng.integers(sides[0], sides[1] + 1))
            h = int(np.clip(w * rng.uniform(0.75, 1.33), sides[0], sides[1]))
            jobs.append((root / split / f"class{c}" / f"{i:05d}.jpg", images[i], w, h, rng.uniform(0.45, 1.0, 3)))

    def write(job) -> None:
        path, img, w, h, tint = job
        gray = np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC), np.float32)
        Image.fromarray((gray[..., None] * tint).astype(np.uint8)).save(path, quality=90)

    for d in {j[0].parent for j in jobs}:
        d.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, jobs))
    marker.touch()
    return root


def pretrained(arch: str, workdir: Path, epochs: int, quick: bool) -> Path:
    """A backbone trained by tudui on the Fashion-MNIST test images at 64 px (RGB, ImageNet's mean/std, as the
    fine-tuning runs normalise), its BatchNorm statistics then re-estimated on 1,000 of those images at the
    training size of the comparisons (ImageNet weights' statistics match the inputs they are used with), the head
    removed."""
    side, bn_side = (32, 64) if quick else (64, 224)
    images, targets = C.load_fmnist(False, C.QUICK_SUBSET if quick else None)
    # The file's name carries a digest of everything the weights depend on (the images, every setting, the
    # versions that build and train the net), so a kept workdir never hands out weights made another way.
    data_sha = hashlib.sha256(images.tobytes() + targets.tobytes()).hexdigest()
    recipe = {"arch": arch, "epochs": epochs, "side": side, "bn_side": bn_side, "images": data_sha,
              "tudui": tudui.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    out = workdir / f"{arch}-fmnist-test-{epochs}ep-{side}px-{key}.pth"
    if out.exists():
        return out
    src = workdir / ("pretrain-quick" if quick else "pretrain")
    if not (src / ".made").is_file() or (src / ".made").read_text() != data_sha:
        shutil.rmtree(src, ignore_errors=True)
        for i, (img, t) in enumerate(zip(images, targets)):
            (src / f"class{t}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(src / f"class{t}" / f"{i:05d}.png")
        (src / ".made").write_text(data_sha)
    t0 = time.perf_counter()
    os.environ["TUDUI_CACHE"] = str(workdir / "cache-pretrain")  # not the user's ~/.cache
    r = tudui.train(data=str(src), model=arch, channels=3, img_size=side, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    epochs=epochs, batch_size=64, plots=False, tensorboard=False, project=str(workdir / "runs"),
                    name=f"pre-{arch}", exist_ok=True)
    model = tudui.create_model(arch, 10, 3, side)
    model.load_state_dict(torch.load(r.best, weights_only=True)["model"])
    recalibrate_bn(model, images[:1000], bn_side)
    head = head_path(model)
    partial = out.with_suffix(".partial")  # an interrupted save never leaves a file under the final name
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith(head + ".")}, partial)
    partial.replace(out)
    print(f"pretrained {arch} on {len(targets):,} Fashion-MNIST test images at {side} px for {epochs} epochs in "
          f"{time.perf_counter() - t0:.0f} s: val top-1 {r.val['top1']:.2%} -> {out.name}", flush=True)
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: np.ndarray, size: int) -> None:
    """Re-estimate every BatchNorm's running mean/var (cumulative average) on `images` (N, 28, 28) uint8, up-scaled
    to size x size RGB and normalised with ImageNet's mean/std."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for i in range(0, len(images), 50):
        x = torch.from_numpy(images[i:i + 50]).float().div(255)[:, None]
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
        model((x - mean) / std)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    model.eval()


def course_model(arch: str, weights: Path, num_classes: int) -> nn.Module:
    """The course's transfer learning: load the weights, freeze everything, replace the last Linear."""
    model = torchvision.models.get_model(arch)
    model.load_state_dict(torch.load(weights, weights_only=True), strict=False)  # the head is not in the file
    for p in model.parameters():
        p.requires_grad = False
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model.classifier[3] = nn.Linear(model.classifier[3].in_features, num_classes)
    return model


# --- 1. frozen backbone: the course's way against tudui --------------------------------------------------------------
def course_way(arch: str, weights: Path, folder: Path, epochs: int, size: int) -> dict:
    side = int(size / 0.875)
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_set = torchvision.datasets.ImageFolder(str(folder / "train"), T.Compose([
        T.Resize(side), T.RandomCrop(size), T.ToTensor(), norm]))
    val_set = torchvision.datasets.ImageFolder(str(folder / "val"), T.Compose([
        T.Resize(side), T.CenterCrop(size), T.ToTensor(), norm]))
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True, num_workers=0)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=64, num_workers=0)
    torch.manual_seed(0)
    model = course_model(arch, weights, len(train_set.classes))
    loss_fn = nn.CrossEntropyLoss()
    head = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(head, lr=0.01, momentum=0.9)
    t0, rows = time.perf_counter(), []
    for epoch in range(epochs):
        C.course_epoch(model, train_loader, loss_fn, optimizer)
        rows.append((time.perf_counter() - t0, C.course_accuracy(model, val_loader)))
        print(f"  course {arch} epoch {epoch + 1}: {rows[-1][0]:.0f} s, val top-1 {rows[-1][1]:.2%}", flush=True)
    return {"seconds": rows[-1][0], "last": rows[-1][1], "best": max(a for _, a in rows)}


def tudui_frozen(arch: str, weights: Path, folder: Path, epochs: int, size: int, workdir: Path) -> dict:
    os.environ["TUDUI_CACHE"] = str(fresh(workdir / f"cache-frozen-{arch}"))  # decoding is counted
    t0 = time.perf_counter()
    r = tudui.train(data=str(folder), model=arch, weights=str(weights), img_size=size, freeze_backbone=True,
                    epochs=epochs, batch_size=64, project=str(workdir / "runs"), name=f"frozen-{arch}", exist_ok=True)
    seconds = time.perf_counter() - t0
    tops = [float(row["val_top1"]) for row in r.history]
    return {"seconds": seconds, "last": tops[-1], "best": max(tops)}


# --- 2. start-up with and without the cache ----------------------------------------------------------------------------
class _Started(Exception):
    pass


class StopAtStart(Callback):
    def on_fit_start(self, run) -> None:
        self.at = time.perf_counter()
        raise _Started


def startup(arch: str, weights: Path, folder: Path, size: int, cache: Path, workdir: Path) -> float:
    os.environ["TUDUI_CACHE"] = str(cache)
    stop = StopAtStart()
    t0 = time.perf_counter()
    try:
        tudui.train(data=str(folder), model=arch, weights=str(weights), img_size=size, epochs=1, batch_size=32,
                    project=str(workdir / "runs"), name=f"startup-{arch}", exist_ok=True, callbacks=[stop])
    except _Started:
        pass
    return stop.at - t0


# --- 3. full fine-tuning throughput ------------------------------------------------------------------------------------
class StepClock(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch(self, run, step, x, y, loss) -> None:
        self.times.append(time.perf_counter())


def steady_rate(times: list[float], batch: int, skip: int = 2) -> float:
    """images/s between the end of step `skip` and the last step (the first steps build oneDNN's kernels)."""
    return batch * (len(times) - 1 - skip) / (times[-1] - times[skip])


def tudui_throughput(arch: str, weights: Path, folder: Path, size: int, steps: int, workdir: Path,
                     **opts) -> tuple[float, str]:
    """(steady images/s of tudui's training loop, the precision --amp settled to)."""
    clock = StepClock()
    r = tudui.train(data=str(folder), model=arch, weights=str(weights), img_size=size, epochs=1, batch_size=32,
                    subset=32 * steps, val_split=0.0, plots=False, tensorboard=False, project=str(workdir / "runs"),
                    name=f"throughput-{arch}", exist_ok=True, callbacks=[clock], **opts)
    amp = torch.load(r.last, weights_only=True)["config"]["amp"]
    return steady_rate(clock.times, 32), amp


def plain_throughput(arch: str, weights: Path, size: int, steps: int, bf16: bool = False,
                     channels_last: bool = False) -> float:
    """A plain loop: preloaded normalised (N, 3, S, S) float batches, model.train(), AdamW, cross-entropy."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=10)
    model.load_state_dict(torch.load(weights, weights_only=True), strict=False)
    data = torch.randn(32 * steps, 3, size, size)
    labels = torch.randint(0, 10, (32 * steps,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        data = data.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for i in range(steps):
        x, y = data[32 * i:32 * (i + 1)], labels[32 * i:32 * (i + 1)]
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter())
    return steady_rate(times, 32)


# --- 4. peak resident memory -------------------------------------------------------------------------------------------
def run_peak(args: list[str], env: dict, workdir: Path) -> tuple[float, str]:
    """(peak resident MiB of `python -m tudui ARGS`, the child's own (_common.peak_rss_mib); its first line)."""
    out_path, err_path = workdir / "rss.out", workdir / "rss.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        mib, code = C.peak_rss_mib(["-m", "tudui", *args], env=env, hwm_dir=workdir, stdout=out, stderr=err)
    if code != 0:
        raise RuntimeError(f"tudui {' '.join(args)} failed: {err_path.read_text()[-2000:]}")
    lines = out_path.read_text().splitlines()
    return mib, lines[0] if lines else ""


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="epochs of comparison 1 [10]")
    p.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_small"])
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="optimisation steps per throughput measurement [10]")
    p.add_argument("--parts", nargs="+", type=int, default=[1, 2, 3, 4], choices=[1, 2, 3, 4],
                   help="which comparisons to run [all four]")
    args = p.parse_args()
    with C.workdir(args) as base:  # photo folder, weights, caches, runs
        workdir = base / "quick" if args.quick else base
        workdir.mkdir(exist_ok=True)
        bench(args, workdir)


def bench(args: argparse.Namespace, workdir: Path) -> None:
    quick, parts = args.quick, set(args.parts)
    epochs, size = (1, 64) if quick else (args.epochs, 224)
    models = ["mobilenet_v3_small"] if quick else args.models
    steps = 4 if quick else args.steps
    C.header("photos: frozen-backbone training, start-up, fine-tuning throughput, memory", quick)
    folder = make_folder(workdir / "photos", (14, 3) if quick else (270, 30), (80, 120) if quick else (256, 500))
    n_files = sum(1 for _ in folder.rglob("*.jpg"))
    mib = sum(f.stat().st_size for f in folder.rglob("*.jpg")) / 2**20
    print(f"photo folder: {n_files:,} JPEGs ({mib:.0f} MiB) in {folder}, training size {size} px\n", flush=True)
    weights = {m: pretrained(m, workdir, 1 if quick else args.pretrain_epochs, quick) for m in models}
    cache = workdir / "cache-startup"  # parts 3 and 4 train from the cache part 2 wrote (or build it themselves)
    targets: list[list[str]] = []

    if 1 in parts:
        print("\n1. frozen backbone: the course's way against tudui --freeze-backbone", flush=True)
        rows1 = []
        for m in models:
            course = course_way(m, weights[m], folder, epochs, size)
            ours = tudui_frozen(m, weights[m], folder, epochs, size, workdir)
            speedup, acc_ok = course["seconds"] / ours["seconds"], ours["last"] >= course["last"]
            rows1 += [[m, "course's way", f"{course['seconds']:.1f}", f"{course['last']:.2%}", f"{course['best']:.2%}",
                       ""],
                      [m, "tudui --freeze-backbone", f"{ours['seconds']:.1f}", f"{ours['last']:.2%}",
                       f"{ours['best']:.2%}", f"{speedup:.2f}x"]]
            targets += [[f"frozen backbone, {m}: >= 8x faster than the course's way", f"{speedup:.2f}x",
                         C.verdict(speedup >= TARGETS["speed"])],
                        [f"frozen backbone, {m}: equal or better val top-1 (last epoch)",
                         f"{ours['last']:.2%} vs {course['last']:.2%}", C.verdict(acc_ok)]]
        print(f"\n1. frozen backbone, {epochs} epoch(s)")
        print(C.table(["model", "way", "wall s", "val top-1 last", "val top-1 best", "speed-up"], rows1, "<<>>>>"))

    if 2 in parts:
        print("\n2. start-up: the first call decodes into an empty cache, the second finds it", flush=True)
        fresh(cache)
        m = models[0]
        first = startup(m, weights[m], folder, size, cache, workdir)
        second = startup(m, weights[m], folder, size, cache, workdir)
        print(f"\n2. start-up ({m}, {n_files:,} files): first call {first:.2f} s (decodes), second "
              f"{second:.2f} s (cache hit): {first / second:.1f}x")
        targets.append(["start-up with the cache >= 10x sooner", f"{first / second:.1f}x",
                        C.verdict(first / second >= TARGETS["startup"])])

    os.environ["TUDUI_CACHE"] = str(cache)
    if 3 in parts:
        print("\n3. full fine-tuning images/s", flush=True)
        rows3 = []
        for m in models:
            plain = plain_throughput(m, weights[m], size, steps)
            ours, amp = tudui_throughput(m, weights[m], folder, size, steps, workdir)
            same = plain_throughput(m, weights[m], size, steps, bf16=amp == "bf16", channels_last=True)
            ours_plain, _ = tudui_throughput(m, weights[m], folder, size, steps, workdir, amp="off",
                                             channels_last=False)
            rows3 += [[m, "plain loop, fp32 (as written by hand)", f"{plain:.1f}", ""],
                      [m, f"tudui defaults (amp {amp}, channels-last)", f"{ours:.1f}", f"{ours / plain:.2f}x"],
                      [m, f"plain loop with tudui's settings (amp {amp}, channels-last)", f"{same:.1f}", ""],
                      [m, "tudui defaults, like for like", f"{ours:.1f}", f"{ours / same:.2f}x"],
                      [m, "tudui --amp off --no-channels-last, like for like", f"{ours_plain:.1f}",
                       f"{ours_plain / plain:.2f}x"]]
            like = min(ours / same, ours_plain / plain)
            targets += [[f"full fine-tuning, {m}: tudui defaults / plain loop as written >= 1.0",
                         f"{ours / plain:.2f}x", C.verdict(ours / plain >= TARGETS["throughput"])],
                        [f"full fine-tuning, {m}: tudui / plain loop, like for like (the lower pair) >= 1.0",
                         f"{like:.2f}x", C.verdict(like >= TARGETS["throughput"])]]
        print("\n3. full fine-tuning, batch 32, steady state")
        print(C.table(["model", "loop", "images/s", "tudui / plain"], rows3, "<<>>"))

    if 4 in parts:
        print("\n4. peak resident memory, mobilenet_v3_small, one epoch of full fine-tuning", flush=True)
        layout_mb = (sum(1 for _ in (folder / "train").rglob("*.jpg")) * int(size / 0.875) ** 2 * 3) / 2**20
        limit = max(1, int(layout_mb / 2))
        env = os.environ | {"TUDUI_CACHE": str(cache), "PYTHONPATH": str(C.ROOT / "src")}
        mw = weights.get("mobilenet_v3_small") or pretrained("mobilenet_v3_small", workdir, 1, quick)
        base = ["train", "--data", str(folder), "--model", "mobilenet_v3_small", "--weights", str(mw), "--img-size",
                str(size), "--epochs", "1", "--batch-size", "32", "--no-plots", "--no-tensorboard", "--project",
                str(workdir / "runs"), "--name", "rss", "--exist-ok"]
        rss = {
            "64 images (the model's own)": run_peak(base + ["--subset", "64"], env, workdir),
            f"all, --memory-limit-mb {limit} (decoded {layout_mb:.0f} MiB: memory-mapped)":
                run_peak(base + ["--memory-limit-mb", str(limit)], env, workdir),
            f"all, default limit (decoded {layout_mb:.0f} MiB: held)": run_peak(base, env, workdir),
        }
        print("\n4. peak resident memory (each child's own VmHWM)")
        print(C.table(["run", "peak RSS MiB"], [[k, f"{v[0]:.0f}"] for k, v in rss.items()], "<>"))
        own, mapped, _held = (v[0] for v in rss.values())
        targets.append([f"peak RSS over the limit <= limit ({limit} MiB) + the model's own ({own:.0f} MiB)",
                        f"{mapped:.0f} MiB", C.verdict(mapped <= own + limit)])

    print("\ntargets (issue 15)")
    print(C.table(["target", "measured", "verdict"], targets, "<><"))
    if quick:
        print("\n--quick smoke test: photos.py ran every comparison")


if __name__ == "__main__":
    main()
