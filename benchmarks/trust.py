"""Why, and how sure (issue 31): do the maps point at the right thing, are the probabilities calibrated, and is an
image of something never taught answered "unknown"? Three parts, one table each, each with its verdicts.

(a) maps. 56x56 mosaics of 2x2 real Fashion-MNIST items: one quadrant (a seeded choice) holds an item of the
    mosaic's label, the other three items of three other classes (distinct, seeded). Written as PNG class folders
    (train/ from the training items, test/ from the test items) and trained by `tudui.train(data=FOLDER)` with every
    default (the default net, `--model auto`). The mosaic's label is one of the four classes it shows and nothing
    marks which, so the best any model can do is spread its probability over the four (top-1 near 25%, the label
    among its top 4 near 100%): what it learns is the evidence for each class, which is what a map shows. For each
    `--method`, on the test mosaics, the map of the label's class (as `tudui explain --class LABEL` draws it, from the
    layer tudui chooses) and the share of its mass inside the label's quadrant (`--box`'s measure), averaged. The
    baseline: the same with every layer's weights randomised (the last step of `tudui explain --sanity`'s cascade).
    A uniform map gives 25%.
(b) calibration. `tudui.train(data="fashion-mnist")` with its defaults and with `--preset best` (`--best-epochs`
    epochs, 14 in the preset): the expected calibration error (15 bins) on the 10,000 test images before and after
    the temperature fitted on the validation split (the run's metrics.json), and test top-1 with and without the
    temperature (the same images, counted from the logits).
(c) unknown. The default model of (b) shown images of digits, a class it was never taught: scikit-learn's 1,797
    8x8 digits, each scaled to 20x20 and centred in 28x28 as MNIST's are (MNIST itself is not on this machine). Per
    score (msp, energy): the AUROC of telling the 10,000 Fashion-MNIST test images from the digits, and the shares
    answered "unknown" at `--reject auto --coverage 0.95` (the threshold stored with the model from its validation
    split): of the digits, and of the Fashion-MNIST test images.

    .venv/bin/python benchmarks/trust.py [--quick] [--parts maps calibration] [--maps 1000] [--mosaics 20000]
        [--mosaic-epochs N] [--model NAME] [--subset N] [--default-epochs N] [--best-epochs 14] [--workdir DIR]
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import _common as C
import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from tudui.core.errors import TuduiError  # noqa: E402  (_common put this checkout's src/ first)
from tudui.core.modes import CAM_METHODS, REJECT_SCORES  # noqa: E402
from tudui.data.sources import FASHION_CLASSES  # noqa: E402
from tudui.engine import cam, rejection  # noqa: E402
from tudui.engine.calibration import ece  # noqa: E402
from tudui.inference.predictor import Predictor  # noqa: E402

SIZES = {"train": 20_000, "test": 2_000}
QUICK_SIZES = {"train": 300, "test": 60}
TARGET_SHARE, BASELINE_NEAR = 70.0, (15.0, 35.0)  # % of the map's mass in the right quadrant; "near 25%"
TARGET_ECE_RATIO = 0.5
COVERAGE = 0.95
FOLDER_NAMES = [c.replace("/", " or ") for c in FASHION_CLASSES]  # 'T-shirt/top' is no folder name


def mosaics(images: np.ndarray, labels: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """((n, 56, 56) uint8 mosaics, (n,) labels, (n,) the label's quadrant 0..3, row by row)."""
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    out = np.zeros((n, 56, 56), np.uint8)
    label, where = rng.integers(0, 10, n), rng.integers(0, 4, n)
    for i in range(n):
        others = rng.choice([c for c in range(10) if c != label[i]], 3, replace=False)
        cells = list(others)
        cells.insert(int(where[i]), label[i])
        for j, c in enumerate(cells):
            r, q = divmod(j, 2)
            out[i, 28 * r:28 * r + 28, 28 * q:28 * q + 28] = images[rng.choice(by_class[c])]
    return out, label, where


def write_folders(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """root/split/<class>/<i>.png; a `done` file last says the split is complete."""
    if (root / split / ".done").is_file():
        return
    for c in range(10):
        (root / split / FOLDER_NAMES[c]).mkdir(parents=True, exist_ok=True)
    for i, (im, y) in enumerate(zip(images, labels)):
        Image.fromarray(im).save(root / split / FOLDER_NAMES[y] / f"{i:05d}.png")
    (root / split / ".done").write_text("")


def quadrant_box(q: int) -> tuple[int, int, int, int]:
    r, c = divmod(int(q), 2)
    return 28 * c, 28 * r, 28 * c + 28, 28 * r + 28


def randomised(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """A copy of `model` with every layer's weights re-initialised (explain --sanity's last step)."""
    net = copy.deepcopy(model).cpu().eval()
    generator = torch.Generator().manual_seed(0)
    for _, module in cam._own_parameter_modules(net, x):
        cam.randomize(module, generator)
    return net


def part_maps(work: Path, quick: bool, n_maps: int, n_train: int, epochs: int | None,
              model_name: str = "auto") -> tuple[list[list], list[list]]:
    sizes = QUICK_SIZES if quick else SIZES | {"train": n_train}
    root = work / "mosaics"
    train_images, train_labels = C.load_fmnist(True)
    test_images, test_labels = C.load_fmnist(False)
    tr, tr_y, _ = mosaics(train_images, train_labels, sizes["train"], 0)
    te, te_y, te_q = mosaics(test_images, test_labels, sizes["test"], 1)
    write_folders(root, "train", tr, tr_y)
    write_folders(root, "test", te, te_y)
    t0 = time.perf_counter()
    r = C.tudui.train(data=[str(root)], project=str(work / "runs"), name=f"mosaics-{model_name}", exist_ok=True,
                      plots=False, tensorboard=False, model=model_name,
                      **({"epochs": 1} if quick else {"epochs": epochs} if epochs else {}))
    train_s = time.perf_counter() - t0
    predictor = Predictor.from_path(r.best, device="cpu", tta=False)
    model, classes = predictor.model.eval(), predictor.classes
    keep = np.arange(min(n_maps, len(te_y)))
    x = predictor.batch([te[i][..., None] for i in keep])  # (N, 1, 56, 56) normalised
    y = [classes.index(FOLDER_NAMES[te_y[i]]) for i in keep]
    with torch.no_grad():
        logits = model(x)
    top1 = float((logits.argmax(1) == torch.tensor(y)).double().mean())
    top4 = float((logits.topk(4, 1).indices == torch.tensor(y)[:, None]).any(1).double().mean())
    layer = cam.find_layer(model, x[:1])
    rows, shares = [], {}

    def measure(label: str, net: torch.nn.Module, method: str, chosen: cam.Layer, n: int) -> float:
        """The mean share in the label's quadrant over the first n mapped mosaics; an all-zero map (no evidence
        anywhere) counts as a uniform one, 25%."""
        t0 = time.perf_counter()
        maps = cam.class_maps(net, x[:n], y[:n], method, chosen)
        zero = [m.max() <= 0 for m in maps]
        share = 100 * np.mean([0.25 if z else cam.box_share(m, quadrant_box(te_q[i]))
                               for m, z, i in zip(maps, zero, keep)])
        rows.append([label, f"{share:.1f}%", f"{sum(zero)}", f"{n:,}", f"{time.perf_counter() - t0:.1f}"])
        return share

    for method in CAM_METHODS:  # Score-CAM: one forward pass per channel of the layer, per image: a tenth of them
        n = max(1, len(keep) // 10) if method == "scorecam" else len(keep)
        shares[method] = measure(method, model, method, layer, n)
    pools = [n for n, m in model.named_modules() if isinstance(m, cam.AVERAGE_POOLS)]
    for name in pools:  # the map after the head's average pool, which tudui passes over
        try:
            pooled = cam.named_layer(model, x[:1], name)
        except TuduiError:  # a pool to 1x1 (a global pool, squeeze-and-excitation's) leaves no map to measure
            continue
        measure(f"gradcam from layer {name} (the average pool after it)", model, "gradcam", pooled, len(keep))
    net = randomised(model, x)
    base = measure("gradcam, every layer's weights randomised", net, "gradcam", cam.named_layer(net, x[:1], layer.name),
                   len(keep))
    rows.append(["uniform map", "25.0%", "", "", ""])
    print(f"(a) maps: {len(tr_y):,} training mosaics, {len(keep):,} test mosaics mapped; model {r.model} "
          f"({len(r.history)} epochs, {train_s:.0f} s); maps from layer {layer.name} "
          f"({'x'.join(map(str, layer.grid))}); test top-1 {100 * top1:.1f}% (4 classes shown: 25% is the ceiling), "
          f"label among the top 4 {100 * top4:.1f}%")
    print(C.table(["method", "map mass in the label's quadrant", "all-zero maps", "mosaics", "s"], rows) + "\n")
    judged = not quick and model_name == "auto"  # the target is of tudui's default net; another --model: figures only
    verdicts = [[f"gradcam >= {TARGET_SHARE:.0f}% in the right quadrant", f"{shares['gradcam']:.1f}%",
                 C.verdict(shares["gradcam"] >= TARGET_SHARE if judged else None)],
                [f"randomised baseline near 25% ({BASELINE_NEAR[0]:.0f}-{BASELINE_NEAR[1]:.0f}%)", f"{base:.1f}%",
                 C.verdict(None if quick else BASELINE_NEAR[0] <= base <= BASELINE_NEAR[1])]]
    return rows, verdicts


def test_logits(run_dir: Path, images: np.ndarray) -> tuple[Predictor, torch.Tensor]:
    """The run's model and its logits (not divided by the temperature) for (N, 28, 28) uint8 images."""
    predictor = Predictor.from_path(run_dir / "best.pt", device="cpu")
    out = [predictor.logits(predictor.batch([im[..., None] for im in images[i:i + 1000]]))
           for i in range(0, len(images), 1000)]
    return predictor, torch.cat(out)


def digits_28() -> np.ndarray:
    """scikit-learn's 1,797 digits (8x8, 0..16) as MNIST-like (N, 28, 28) uint8: scaled to 20x20, centred."""
    d = load_digits().images.astype(np.float32) / 16
    t = torch.nn.functional.interpolate(torch.from_numpy(d)[:, None], size=(20, 20), mode="bilinear",
                                        align_corners=False)[:, 0]
    out = torch.nn.functional.pad(t, (4, 4, 4, 4))
    return (out.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def part_calibration_unknown(work: Path, quick: bool, best_epochs: int, subset: int | None,
                             default_epochs: int | None) -> None:
    common = {"data": ["fashion-mnist"], "project": str(work / "runs"), "exist_ok": True, "plots": False,
              "tensorboard": False, **({"subset": subset} if subset else {})}
    if quick:
        common |= {"data_root": C.quick_data_root(work), "epochs": 1}
    images, labels = C.load_fmnist(False, C.QUICK_TEST if quick else None)
    recipes = {"default" + (f" ({default_epochs} epochs)" if default_epochs else ""):
               {"epochs": default_epochs} if default_epochs else {},
               f"--preset best ({best_epochs} epochs)": {"preset": "best", "epochs": best_epochs}}
    if quick:
        recipes = {"default": {}, "--preset best (1 epoch)": {"preset": "best"}}
    rows, verdicts = [], []
    print("(b) calibration: Fashion-MNIST test (10,000 images" + (f"; runs trained on a {subset:,}-image subset"
          if subset else "") + "), 15 bins; T fitted on the run's validation split; each row as its run ends",
          flush=True)
    for i, (label, options) in enumerate(recipes.items()):
        t0 = time.perf_counter()
        r = C.tudui.train(name=f"calibration-{i}", **common, **options)
        seconds = time.perf_counter() - t0
        cal = json.loads((r.run_dir / "metrics.json").read_text())["calibration"]
        predictor, z = test_logits(r.run_dir, images)
        t = cal["temperature"]
        y = torch.tensor([predictor.classes.index(FASHION_CLASSES[int(c)]) for c in labels])
        before, after = ece(z.softmax(1), y), ece((z / t).softmax(1), y)
        top1 = [float((p.argmax(1) == y).double().mean()) for p in (z, z / t)]
        rows.append([label, f"{t:.3f}", f"{before:.4f}", f"{after:.4f}",
                     f"{after / before:.2f}x" if before > 0 else "n/a", f"{100 * top1[0]:.2f}%",
                     f"{100 * top1[1]:.2f}%", f"{seconds:.0f}"])
        ratio = after / before if before > 0 else float("nan")
        verdicts.append([f"{label}: ECE after <= {TARGET_ECE_RATIO}x before, top-1 unchanged",
                         f"{ratio:.2f}x, {100 * (top1[1] - top1[0]):+.2f} points",
                         C.verdict(None if quick else bool(ratio <= TARGET_ECE_RATIO and top1[0] == top1[1]))])
        if not quick and i + 1 < len(recipes):  # so far (the full table follows at the end)
            print(C.table(["recipe so far", "T", "ECE before", "ECE after"], [r[:4] for r in rows]) + "\n", flush=True)
        if i == 0:
            part_unknown(r.run_dir, predictor, z, t)
    print(C.table(["recipe", "T", "ECE before", "ECE after", "after / before", "top-1 before", "top-1 after",
                   "wall s"], rows) + "\n")
    print(C.table(["target", "measured", "verdict"], verdicts) + "\n")


def part_unknown(run_dir: Path, predictor: Predictor, z_in: torch.Tensor, t: float) -> None:
    _, z_out = test_logits(run_dir, digits_28())
    unknown_rows, unknown_verdicts = [], []
    for kind in REJECT_SCORES:
        s_in, s_out = rejection.score(z_in, kind, t), rejection.score(z_out, kind, t)
        auroc = roc_auc_score(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in.numpy(), s_out.numpy()])
        limit = rejection.threshold(predictor.meta, "auto", None, COVERAGE, kind)
        out_rejected = float((s_out < limit).double().mean())
        in_rejected = float((s_in < limit).double().mean())
        unknown_rows.append([kind, f"{auroc:.3f}", f"{limit:.4g}", f"{100 * out_rejected:.1f}%",
                             f"{100 * in_rejected:.1f}%"])
        unknown_verdicts.append([f"{kind}: share of digits answered unknown at coverage {COVERAGE}",
                                 f"{100 * out_rejected:.1f}%", C.verdict(None)])
    print("(c) unknown: the default model of (b) shown scikit-learn's digits (1,797, as 28x28) against the "
          "Fashion-MNIST test images; --reject auto --coverage 0.95")
    print(C.table(["score", "AUROC", "threshold", "digits answered unknown", "Fashion-MNIST test answered unknown"],
                  unknown_rows) + "\n")
    print(C.table(["target", "measured", "verdict"], unknown_verdicts) + "\n", flush=True)


def main() -> None:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--best-epochs", type=int, default=14, help="epochs of the --preset best run [14, the preset's]")
    p.add_argument("--maps", type=int, default=1000, help="test mosaics mapped per method (Score-CAM: a tenth) [1000]")
    p.add_argument("--mosaics", type=int, default=SIZES["train"], help=f"training mosaics [{SIZES['train']:,}]")
    p.add_argument("--mosaic-epochs", type=int, default=None, help="epochs on the mosaics [tudui's default]")
    p.add_argument("--model", default="auto", help="the net trained on the mosaics (any --model of tudui train; the "
                                                   "target is judged for the default, auto, only) [auto]")
    p.add_argument("--subset", type=int, default=None,
                   help="training images of the Fashion-MNIST runs of (b) and (c) (the test set stays whole) [all]")
    p.add_argument("--default-epochs", type=int, default=None, help="epochs of (b)'s default run [tudui's default]")
    p.add_argument("--parts", nargs="+", choices=["maps", "calibration"], default=["maps", "calibration"],
                   help="which parts to run: maps (a), calibration (b and c) [both]")
    args = p.parse_args()
    C.header("Maps, calibration and unknown (issue 31)", args.quick)
    with C.workdir(args, "tudui-trust-") as work:
        if "maps" in args.parts:
            _, map_verdicts = part_maps(work, args.quick, 10 if args.quick else args.maps, args.mosaics,
                                        args.mosaic_epochs, args.model)
            print(C.table(["target", "measured", "verdict"], map_verdicts) + "\n", flush=True)
        if "calibration" not in args.parts:
            return
        part_calibration_unknown(work, args.quick, args.best_epochs, args.subset, args.default_epochs)


if __name__ == "__main__":
    main()
