"""The tables a benchmark script prints, read back: every expected row present, every figure finite and plausible.

`check_report(script, stdout)` is what tests/benchmarks/quick.py calls after each `--quick` run. The tables are
core/console.table's (a header, a line of dashes per column, the rows); the dashes give each column's extent, so a
cell is read by position, whatever it holds. A --quick run's figures measure nothing (a loaded machine, a few hundred
images), so the ranges are what any run must print (a share of 0-100%, a positive speed), not targets.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

VERDICTS = {"met", "NOT met", "n/a"}
# a number as the scripts print them: 1,234 / 12.5 / +0.30 / -1.2, with an optional unit or suffix right after it
NUMBER = re.compile(r"(?<![\w.])([+-]?\d[\d,]*(?:\.\d+)?)\s?(%|x|s|min|MiB|points)?(?![\w])")


@dataclass
class Table:
    title: str  # the line above the header ("" when none)
    headers: list[str]
    rows: list[list[str]]

    def column(self, header: str) -> list[str]:
        return [r[self.headers.index(header)] for r in self.rows]

    def labels(self) -> list[str]:
        return [r[0] for r in self.rows]


def parse_tables(text: str) -> list[Table]:
    """Every table in `text`: a line of dash runs separated by two spaces, the header above it, rows until a blank
    line (cells cut at the dash runs' columns)."""
    lines = text.splitlines()
    tables = []
    for i, line in enumerate(lines):
        if i == 0 or not re.fullmatch(r"-+(  -+)*", line):
            continue
        spans = [m.span() for m in re.finditer(r"-+", line)]
        spans = [(a, spans[k + 1][0] - 2 if k + 1 < len(spans) else None) for k, (a, _) in enumerate(spans)]

        def cells(row: str) -> list[str]:
            return [row[a:b].strip() for a, b in spans]
        rows = []
        for row in lines[i + 1:]:
            if not row.strip():
                break
            rows.append(cells(row))
        tables.append(Table(lines[i - 2] if i >= 2 else "", cells(lines[i - 1]), rows))
    return tables


def figures(cell: str) -> list[tuple[float, str]]:
    """The numbers in a cell with their units: '52.70%' -> [(52.7, '%')], '1,234 .. 2,345' -> two, 'n/a' -> []."""
    return [(float(m.group(1).replace(",", "")), m.group(2) or "") for m in NUMBER.finditer(cell)]


def check_figures(table: Table) -> None:
    """No NaN or infinity anywhere; shares in [0, 100]%, ratios and rates positive, times and sizes not negative
    (only a signed difference, '+0.30' or '-1.2 points', may be below zero)."""
    for row in table.rows:
        for header, cell in zip(table.headers, row):
            where = (table.title, header, row[0], cell)
            assert not re.search(r"\b(nan|inf|infinity)\b", cell, re.I), where
            for value, unit in figures(cell):
                assert math.isfinite(value), where
                if unit == "%":
                    assert 0 <= value <= 100, where
                elif unit == "x":
                    assert value > 0, where
                elif unit in ("s", "min", "MiB"):
                    assert value >= 0, where
            if re.search(r"img/s|images/s|MiB", header) and figures(cell):
                assert all(v > 0 for v, _ in figures(cell)), where
            if re.fullmatch(r"(wall )?s|s per run|epoch( 1)? s|.*: s", header) and figures(cell):
                assert all(v >= 0 for v, _ in figures(cell)), where


def find(tables: list[Table], *headers: str) -> Table:
    """The table whose header starts with `headers`."""
    found = [t for t in tables if t.headers[:len(headers)] == list(headers)]
    assert found, f"no table with the columns {headers}; tables: {[t.headers for t in tables]}"
    return found[0]


def assert_rows(table: Table, *patterns: str) -> None:
    """Each pattern (a regular expression) matches exactly one row label, and every row is expected."""
    labels = table.labels()
    for p in patterns:
        assert sum(bool(re.fullmatch(p, label)) for label in labels) == 1, (p, labels)
    assert len(labels) == len(patterns), (labels, patterns)


def targets(tables: list[Table], *patterns: str, text_ok: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """The targets table: each pattern names one target; every verdict is met, NOT met or n/a; every measured cell
    holds a figure, or (for the patterns in text_ok) may say in words why there is none."""
    table = find(tables, "target", "measured", "verdict")
    check_figures(table)
    assert_rows(table, *patterns)
    for label, measured, verdict in table.rows:
        assert verdict in VERDICTS, (label, verdict)
        if not any(re.fullmatch(p, label) for p in text_ok):
            assert figures(measured), (label, measured)
    return {r[0]: r[1:] for r in table.rows}


def fixed_row(text: str, label: str, columns: int) -> list[float]:
    """A row of a side-by-side layout printed without dashes ('label   v1   v2'): its figures."""
    m = re.search(rf"^{re.escape(label)}\s+" + r"\s+".join([r"(\S+)"] * columns) + r"\s*$", text, re.M)
    assert m, f"no row {label!r}"
    values = [figures(c) for c in m.groups()]
    assert all(len(v) == 1 and math.isfinite(v[0][0]) for v in values), (label, m.groups())
    return [v[0][0] for v in values]


# --- what each script's --quick run prints ---------------------------------------------------------------------------
def _time_to_accuracy(out: str, tables: list[Table]) -> None:
    per_epoch = find(tables, "epoch", "course: s", "course: test acc", "tudui default: s", "tudui default: test acc")
    assert per_epoch.labels() == ["1"]
    runs = find(tables, "run", "seed", "epochs", "final acc")
    assert_rows(runs, "course", "tudui default")
    assert runs.column("epochs") == ["1", "1"] and runs.column("seed") == ["0", "0"]
    assert all(figures(c) for c in runs.column("final acc"))
    targets(tables, r"tudui default reaches the course's accuracy >= 25x sooner", r"tudui default ends >= 93\.0%",
            r"\.\.\. within <= 0\.4x the course's 10-epoch time")


def _loop_overhead(out: str, tables: list[Table]) -> None:
    loops = find(tables, "loop", "epochs", "images/s", "range", "tudui / this")
    assert loops.labels()[:2] == ["plain", "tudui"] and loops.labels()[2:] in ([], ["lightning"])
    for row in loops.rows[:2]:
        assert int(row[1]) >= 1 and figures(row[2])
        lo, hi = (v for v, _ in figures(row[3]))
        assert 0 < lo <= hi, row
    assert loops.rows[1][4] == "1.000"  # tudui against itself
    targets(tables, r"tudui / plain loop >= 0\.97", r"tudui / Lightning >= 1\.0 \(goal\)",
            text_ok=(r"tudui / Lightning >= 1\.0 \(goal\)",))  # Lightning absent: says so instead


def _data_path(out: str, tables: list[Table]) -> None:
    paths = find(tables, "path", "images/s", "range", "tudui / this")
    assert_rows(paths, r"tudui: uint8 tensor on \w+ \+ augment_batch \+ normalize",
                r"torchvision: PIL Dataset \+ transforms, DataLoader workers=0",
                r"torchvision: PIL Dataset \+ transforms, DataLoader workers=2")
    assert paths.rows[0][3] == "1.0x" and all(figures(c) for c in paths.column("images/s"))
    targets(tables, r"tudui path >= 5x the fastest DataLoader path")


def _peak_memory(out: str, tables: list[Table]) -> None:
    mem = find(tables, "process", "peak MiB", "/ floor", "wall s")
    assert_rows(mem, r"floor: import torch, torchvision", r"tudui train --data fashion-mnist --epochs 1 \(--quick: a [\d,]+-image copy\)")
    floor, run = (figures(c)[0][0] for c in mem.column("peak MiB"))
    assert 20 < floor <= run < 64 * 1024  # MiB: more than an empty interpreter, less than any machine here
    targets(tables, r"peak resident memory <= 2 GiB")


def _ddp_cpu(out: str, tables: list[Table]) -> None:
    assert fixed_row(out, "global batch", 2) == [128, 256]
    for label in ("time per epoch (s)", "throughput (images/s)", "wall time incl. start-up (s)"):
        assert all(v > 0 for v in fixed_row(out, label, 2)), label
    assert all(0 <= v <= 100 for v in fixed_row(out, "val top-1 after the run", 2))
    ratio = re.search(r"^ratio (\S+)x\.", out, re.M)
    assert ratio and float(ratio.group(1)) > 0


def _toolbox_sweep(out: str, tables: list[Table]) -> None:
    sweep = find(tables, "variant", "val top-1 % (mean ± sd)", "vs baseline", "test top-1 %", "s per run", "seeds")
    assert_rows(sweep, "baseline", "trivialaugment", r"mixup 0\.2")
    for row in sweep.rows:
        for cell in (row[1], row[3]):  # 'mean ± sd' in points of top-1
            mean, sd = (v for v, _ in figures(cell))
            assert 0 <= mean <= 100 and sd == 0, row  # one seed: no spread
        assert row[5] == "1" and figures(row[4])[0][0] >= 0  # a --quick run on 512 images may round to 0 s
    assert sweep.rows[0][2] == "+0.00"  # the baseline against itself


def _lr_find_rule(out: str, tables: list[Table]) -> None:
    rule = find(tables, "dataset x model", "suggested lr (per seed)", "keep default?", "top-1 % with suggestion",
                "top-1 % with default 3e-3", "recommended - default (points)", "time s")
    assert len(rule.rows) >= 2  # --quick: two dataset x model pairs
    for row in rule.rows:
        for cell in (row[3], row[4]):
            assert all(0 <= v <= 100 for v, _ in figures(cell)), row
    assert re.search(r"recommended vs default: .* is [+-]\d+\.\d\d to [+-]\d+\.\d\d points", out)


def _peers(out: str, tables: list[Table]) -> None:
    epochs = find(tables, "epoch", "Ultralytics yolov8n-cls (wall, val top-1)", "tudui default (wall, val top-1)")
    assert epochs.labels()[0] == "1"
    targets(tables, r"tudui reaches Ultralytics' final accuracy >= \S+x sooner", r"tudui ends >= \S+ points higher",
            text_ok=(r"tudui reaches Ultralytics' final accuracy >= \S+x sooner",))  # 'never'


def _photos(out: str, tables: list[Table]) -> None:
    model = "mobilenet_v3_small"
    frozen = find(tables, "model", "way", "wall s", "val top-1 last", "val top-1 best", "speed-up")
    assert [r[:2] for r in frozen.rows] == [[model, "course's way"], [model, "tudui --freeze-backbone"]]
    tuning = find(tables, "model", "loop", "images/s", "tudui / plain")
    assert len(tuning.rows) == 5 and {r[0] for r in tuning.rows} == {model}
    memory = find(tables, "run", "peak RSS MiB")
    assert_rows(memory, r"64 images \(the model's own\)",
                r"all, --memory-limit-mb \d+ \(decoded \d+ MiB: memory-mapped\)",
                r"all, default limit \(decoded \d+ MiB: held\)")
    assert re.search(r"second \S+ s \(cache hit\): \S+x$", out, re.M)
    targets(tables, rf"frozen backbone, {model}: >= 8x faster than the course's way",
            rf"frozen backbone, {model}: equal or better val top-1 \(last epoch\)",
            r"start-up with the cache >= 10x sooner",
            rf"full fine-tuning, {model}: tudui defaults / plain loop as written >= 1\.0",
            rf"full fine-tuning, {model}: tudui / plain loop, like for like \(the lower pair\) >= 1\.0",
            r"peak RSS over the limit <= limit \(\d+ MiB\) \+ the model's own \(\d+ MiB\)")


def _preset_max(out: str, tables: list[Table]) -> None:
    epochs = find(tables, "epoch", "s", "test acc")
    assert epochs.labels() == ["1"]
    targets(tables, r"--preset max reaches >= 95\.0% within 60 minutes")


def _default_elsewhere(out: str, tables: list[Table]) -> None:
    runs = find(tables, "dataset", "recipe", "test top-1 per seed", "median", "s per run")
    assert [r[:2] for r in runs.rows] == [[d, r] for d in ("mnist", "digits", "folders") for r in ("previous", "today")]
    for row in runs.rows:
        assert 0 <= float(row[2]) <= 100 and row[2] == row[3] and float(row[4]) > 0  # one seed: it is the median
    targets(tables, *(rf"{d}: today's default not worse than the previous \(median, -0\.5 points\)"
                      for d in ("mnist", "digits", "folders")),
            *(rf"{d}: today's seconds per run <= 1\.1x the previous's \(median\)"
              for d in ("mnist", "digits", "folders")))


def _amp_speed(out: str, tables: list[Table]) -> None:
    cases = find(tables, "model, input, batch", "multiply-adds per weight per step", "fp32 img/s", "bf16 img/s")
    assert_rows(cases, r"fast, 1x28x28, 128", r"fast-mlp, 1x28x28, 128", r"fast-wide, 1x28x28, 128")
    for row in cases.rows:
        assert row[5] in ("bf16", "off") and row[6] in VERDICTS, row
        assert float(row[1].replace(",", "")) > 0
    assert re.search(r"^verdict: --amp auto picks the faster precision in every case: (met|NOT met)$", out, re.M)


def _gpu_time_to_accuracy(out: str, tables: list[Table]) -> None:
    runs = find(tables, "recipe", "seed", "epochs", "test", "to 94%", "to 95%", "val")
    assert [r[0] for r in runs.rows] == ["best b512", "best b512 eager"]
    assert all(int(n) >= 1 for n in runs.column("epochs"))
    targets(tables, r"94% test top-1 within 10 s on the GPU \(best b512\)", r"time to 95% test top-1 \(report\)",
            text_ok=(r"94% test top-1 within 10 s on the GPU \(best b512\)", r"time to 95% test top-1 \(report\)"))


def _small_data(out: str, tables: list[Table]) -> None:
    runs = find(tables, "set", "per class", "recipe", "test top-1 per seed", "mean", "s per run", "batch, epochs")
    recipes = ["a new", "b today", "c course", "d keras", "e oracle"]
    assert [r[:3] for r in runs.rows] == [["hard", "10", r] for r in recipes]  # --quick: one set, one size
    check_figures(runs)
    for row in runs.rows:
        assert 0 <= float(row[3]) <= 100 and row[3] == row[4] and float(row[5]) > 0  # one seed: it is the mean
    assert runs.rows[1][6] == "batch 128, 10 epochs" and runs.rows[0][6] == "batch 16, 40 epochs"  # 36 images
    targets(tables, r"hard 10/class: new within 1\.5 points of the oracle",
            r"hard 10/class: new >= 10 points over today's", r"hard 10/class: new not below the course or keras")


def _labels(out: str, tables: list[Table]) -> None:
    runs = find(tables, "run", "test mAP", "macro-F1 at 0.5", "macro-F1 tuned", "wall s")  # several labels per image
    assert_rows(runs, r"tudui default \([\w-]+, \d+ epochs\)", r"learner's loop \(resnet18, BCE, Adam, \d+ epochs\)")
    assert all(figures(c) for col in ("test mAP", "macro-F1 at 0.5", "macro-F1 tuned") for c in runs.column(col))
    runs = find(tables, "mode", "balanced acc per seed", "mean", "top-1 mean", "s per run", "balance, best.pt")
    assert_rows(runs, "today", "none", "sampler", "loss", "logit-adjust", "auto")
    for row in runs.rows:
        assert 0 <= float(row[1]) <= 100 and row[1] == row[2] and float(row[4]) > 0  # one seed: it is the mean
    chosen = dict(zip(runs.labels(), runs.column("balance, best.pt")))
    assert chosen["today"] == "none, best by top1" and chosen["sampler"] == "sampler, best by balanced-accuracy"
    assert chosen["auto"] == "logit-adjust, best by balanced-accuracy"  # ratio 100: over 10
    assert "training images per class [200, 119, 71, 43, 25, 15, 9, 5, 3, 2]" in out  # the exponential profile
    targets(tables, r"tudui mAP >= the loop's", r"\.\.\. in <= 0\.5x its time",
            r"tuned thresholds raise tudui's macro-F1 over 0\.5",
            r"--balance auto >= 3 points of balanced accuracy over none")


def _trust(out: str, tables: list[Table]) -> None:
    maps = find(tables, "method", "map mass in the label's quadrant", "all-zero maps", "mosaics", "s")
    assert_rows(maps, "gradcam", r"gradcam\+\+", "layercam", "eigencam", "scorecam", "occlusion",
                r"gradcam from layer \w+ \(the average pool after it\)", "gradcam, every layer's weights randomised",
                "uniform map")
    check_figures(maps)
    assert all(figures(c) for c in maps.column("map mass in the label's quadrant"))
    assert maps.rows[-1][1] == "25.0%"
    assert re.search(r"maps from layer 11 \(7x7\)", out)  # the default net at 56 px: before its average pool
    cal = find(tables, "recipe", "T", "ECE before", "ECE after", "after / before", "top-1 before", "top-1 after")
    assert_rows(cal, "default", r"--preset best \(1 epoch\)")
    check_figures(cal)
    for row in cal.rows:
        assert float(row[1]) > 0 and 0 <= float(row[2]) <= 1 and 0 <= float(row[3]) <= 1
        assert row[5] == row[6]  # a temperature never changes the top class
    unknown = find(tables, "score", "AUROC", "threshold", "digits answered unknown")
    assert_rows(unknown, "msp", "energy")
    check_figures(unknown)
    assert all(0 <= float(a) <= 1 for a in unknown.column("AUROC"))
    verdicts = [t for t in tables if t.headers == ["target", "measured", "verdict"]]
    assert len(verdicts) == 3  # one under each part's table
    targets([Table("", verdicts[0].headers, [r for t in verdicts for r in t.rows])],
            r"gradcam >= 70% in the right quadrant", r"randomised baseline near 25% \(15-35%\)",
            r"default: ECE after <= 0\.5x before, top-1 unchanged",
            r"--preset best \(1 epoch\): ECE after <= 0\.5x before, top-1 unchanged",
            r"msp: share of digits answered unknown at coverage 0\.95",
            r"energy: share of digits answered unknown at coverage 0\.95")


CHECKS = {
    "trust.py": _trust,
    "small_data.py": _small_data,
    "labels.py": _labels,
    "time_to_accuracy.py": _time_to_accuracy,
    "loop_overhead.py": _loop_overhead,
    "data_path.py": _data_path,
    "peak_memory.py": _peak_memory,
    "ddp_cpu.py": _ddp_cpu,
    "toolbox_sweep.py": _toolbox_sweep,
    "lr_find_rule.py": _lr_find_rule,
    "peers.py": _peers,
    "photos.py": _photos,
    "preset_max.py": _preset_max,
    "default_elsewhere.py": _default_elsewhere,
    "amp_speed.py": _amp_speed,
    "gpu_time_to_accuracy.py": _gpu_time_to_accuracy,
}


def _timm_transfer(out: str, tables: list[Table]) -> None:
    runs = find(tables, "train images", "run", "val top-1", "wall s")
    assert len(runs.rows) == 10 and len(set(runs.column("train images"))) == 2
    targets(tables, r"pretrained features beat scratch at \d+ images by >= 20 points",
            r"frozen head, \d+ epochs <= 1\.5x one backbone pass \(\d+ images\)")


CHECKS["timm_transfer.py"] = _timm_transfer


def _tune(out: str, tables: list[Table]) -> None:
    searches = find(tables, "search", "best val top-1", "found at trial", "complete/pruned", "epochs trained", "wall s",
                    "best values")
    assert_rows(searches, r"tudui tune \(TPE, median pruner\)", r"random search \(no pruning\)")
    for row in searches.rows:
        assert len(figures(row[1])) == 1 and figures(row[1])[0][1] == "%", row
        complete, pruned = (int(v) for v in row[3].split("/"))
        assert 1 <= int(row[2]) <= complete + pruned == 2 and int(row[4]) == 2, row  # --quick: 2 trials of 1 epoch
        assert "lr=" in row[6] and "model=" in row[6], row  # the default space, the model among its options
    assert searches.rows[1][3] == "2/0"  # random search prunes nothing
    retrained = find(tables, "retrained", "epochs", "val top-1", "test top-1", "wall s")
    assert_rows(retrained, r"tudui tune's best config", r"today's default")
    assert retrained.column("epochs") == ["1", "1"]
    assert re.search(r"^what tuning bought: [+-]\d+\.\d\d points of test top-1 over today's default; TPE's best "
                     r"validation top-1 [+-]\d+\.\d\d points from random search's, in \d+\.\d\dx its wall time$",
                     out, re.M)


CHECKS["tune.py"] = _tune


def check_report(script: str, stdout: str) -> None:
    """Every table of `script`'s report parses, holds only finite, plausible figures and the rows it must have."""
    tables = parse_tables(stdout)
    for table in tables:
        assert table.rows, f"{script}: table {table.headers} has no rows"
        assert all(len(r) == len(table.headers) for r in table.rows)
        check_figures(table)
    CHECKS[script](stdout, tables)
