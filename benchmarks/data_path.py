"""Data path: images/s of augmented, normalised training batches, tudui's in-memory path vs torchvision's, in one run.

  - tudui: the training set as one (N, 1, 28, 28) uint8 tensor on the training device; per batch a shuffled
    index, `tudui.data.augment_batch` (random translation by up to 3 px with zero fill + horizontal flip) and
    `tudui.data.normalize`;
  - torchvision: a Dataset of PIL images -> RandomCrop(28, padding=3) + RandomHorizontalFlip + ToTensor +
    Normalize, through a DataLoader (shuffle) with 0 and with 2 worker processes.
Both produce the same thing, (B, 1, 28, 28) float32 batches and (B,) labels, from real Fashion-MNIST training
images. Each pass over the data is timed; the first is a warm-up (worker start-up, caches) and not counted.

    .venv/bin/python benchmarks/data_path.py [--quick] [--repeats 5] [--batch-size 256]
"""
from __future__ import annotations

import time

import _common as C
import torch
from torchvision import transforms as T

from tudui.data import DataSpec, augment_batch, normalize
from tudui.core.device import select_device

TARGET = 5.0  # issue 4: the in-memory path >= 5x the images/s of the DataLoader path
PAD = 3  # px of random translation at 28x28 (DataSpec.pad), the same in both paths


def memory_pass(images: torch.Tensor, targets: torch.Tensor, spec: DataSpec, bs: int, gen: torch.Generator) -> int:
    n = 0
    order = torch.randperm(len(targets), device=images.device, generator=gen)
    for i in range(0, len(order), bs):
        idx = order[i:i + bs]
        x = normalize(augment_batch(images[idx], PAD, True, gen), spec)  # (B, 1, 28, 28) float32
        y = targets[idx]
        n += len(y)
    return n


def loader_pass(loader) -> int:
    n = 0
    for x, y in loader:  # x: (B, 1, 28, 28) float32
        n += len(y)
    return n


def measure(fn, passes: int, device: torch.device) -> list[float]:
    """images/s of each pass after the first (warm-up)."""
    rates = []
    for i in range(passes + 1):
        C.sync(device)
        t0 = time.perf_counter()
        n = fn()
        C.sync(device)
        if i:
            rates.append(n / (time.perf_counter() - t0))
    return rates


def main() -> None:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the data per path, after a warm-up [5]")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch, both paths [256]")
    args = p.parse_args()
    repeats = 1 if args.quick else args.repeats
    C.header("data path: augmented, normalised training batches", args.quick)

    images, targets = C.load_fmnist(True, C.QUICK_SUBSET if args.quick else None)  # (N, 28, 28) uint8
    mean, std = float(images.mean() / 255), float(images.std() / 255)
    spec = DataSpec(classes=[str(i) for i in range(10)], img_size=28, channels=1, mean=[mean], std=[std])
    device = select_device("auto")
    print(f"{len(targets):,} images per pass, batches of {args.batch_size}, {repeats} timed pass(es) per path, "
          f"tudui path on {device}\n", flush=True)

    rates: dict[str, list[float]] = {}
    mem = torch.from_numpy(images.copy()).unsqueeze(1).to(device)  # (N, 1, 28, 28) uint8, decoded once
    mem_y = torch.from_numpy(targets).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    rates[f"tudui: uint8 tensor on {device.type} + augment_batch + normalize"] = measure(
        lambda: memory_pass(mem, mem_y, spec, args.batch_size, gen), repeats, device)

    tf = T.Compose([T.RandomCrop(28, padding=PAD), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize((mean,), (std,))])
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(C.PILDataset(images, targets, tf), batch_size=args.batch_size,
                                             shuffle=True, num_workers=workers, persistent_workers=workers > 0)
        rates[f"torchvision: PIL Dataset + transforms, DataLoader workers={workers}"] = measure(
            lambda: loader_pass(loader), repeats, torch.device("cpu"))
        del loader  # stops its workers before the next measurement

    names = list(rates)
    med = {k: C.median(v) for k, v in rates.items()}
    rows = [[k, f"{med[k]:,.0f}", f"{min(v):,.0f} .. {max(v):,.0f}", f"{med[names[0]] / med[k]:.1f}x"]
            for k, v in rates.items()]
    print("images per second (median over timed passes)")
    print(C.table(["path", "images/s", "range", "tudui / this"], rows))

    best_loader = max(names[1:], key=med.get)
    ratio = med[names[0]] / med[best_loader]
    print("\ntargets (issue 4)")
    print(C.table(["target", "measured", "verdict"],
                  [["tudui path >= 5x the fastest DataLoader path", f"{ratio:.1f}x", C.verdict(ratio >= TARGET)]]))


if __name__ == "__main__":
    main()
