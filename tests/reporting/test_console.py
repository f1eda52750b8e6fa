"""Console tables line up by display width: a Chinese character takes two terminal cells."""
import wcwidth

from tudui.core.console import table
from tudui.reporting.tables import confusion_table, per_class_table


def column_starts(line: str, cells: list[str]) -> list[int]:
    """Display column at which each of `cells` starts in `line` (searched left to right)."""
    starts, pos = [], 0
    for c in cells:
        pos = line.index(c, pos)
        starts.append(wcwidth.width(line[:pos]))
        pos += len(c)
    return starts


def test_mixed_width_names_align():
    rows = [["裤子", "0.912", 120], ["T-shirt/top", "0.5", 7], ["运动鞋", "1.000", 3], ["é", "0.25", 10_000]]
    text = table(["class", "recall", "support"], rows, "<<>")
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    # Left-aligned columns: every second column starts at the same display column ...
    starts = [column_starts(line, [str(r[0]), str(r[1])])[1] for line, r in zip(lines[2:], rows)]
    assert len(set(starts)) == 1 and starts[0] == wcwidth.width("T-shirt/top") + 2
    # ... and right-aligned numbers end at the same display column as their header.
    ends = {wcwidth.width(line) for line in lines}
    assert len(ends) == 1, text
    assert lines[1].split() == ["-" * 11, "-" * 6, "-" * 7]


def test_confusion_table_clips_names_by_display_width():
    classes = ["运动鞋运动鞋", "T-shirt/top", "包"]
    text = confusion_table(classes, [[1, 0, 0], [0, 2, 0], [0, 0, 3]])
    header = text.splitlines()[1]
    assert "运动鞋运" in header and "T-shirt/" in header  # 8 cells each: 4 ideographs or 8 letters
    assert len({wcwidth.width(line) for line in text.splitlines()[1:]}) == 1


def test_per_class_table_with_chinese_names():
    metrics = {"per_class": {"precision": [0.5, 1.0], "recall": [1.0, 0.25], "f1": [0.667, 0.4], "support": [2, 4]}}
    lines = per_class_table(["凉鞋", "sandal"], metrics).splitlines()
    assert len({wcwidth.width(line) for line in lines}) == 1  # right-aligned last column: one width for all
