"""tables.py, the reader of the benchmark reports test_quick.py checks: a real --quick report passes, and each kind
of broken report fails (so the --quick tests can fail on a report, not only on an exit code)."""
from __future__ import annotations

import pytest

from tests.benchmarks.tables import check_report, figures, parse_tables

# time_to_accuracy.py --quick's tables as it printed them (a loaded 2-core machine: the figures mean nothing)
REPORT = """\
# time to accuracy, Fashion-MNIST  [--quick smoke test: figures are not measurements]

wall time from the start of training to each epoch's end, and test accuracy then (tudui: seed 0)
epoch  course: s  course: test acc  tudui default: s  tudui default: test acc
-----  ---------  ----------------  ----------------  -----------------------
1           58.2            52.70%             228.6                   56.35%

time to the course's final accuracy (52.70%), speed-up against the course, time to 93% and 94%, per seed
run            seed  epochs  final acc  to 52.70%  speed-up       to 93%       to 94%
-------------  ----  ------  ---------  ---------  --------  -----------  -----------
course            0       1     52.70%     58.2 s      1.0x  not reached  not reached
tudui default     0       1     56.35%    228.6 s      0.3x  not reached  not reached

targets (issue 17; the median over tudui's seeds, each against the course's run above)
target                                                                          measured  verdict
---------------------------------------------------------  -----------------------------  -------
tudui default reaches the course's accuracy >= 25x sooner      median 0.3x (seeds: 0.3x)      n/a
tudui default ends >= 93.0%                                median 56.35% (seeds: 56.35%)      n/a
... within <= 0.4x the course's 10-epoch time                median 3.93x (seeds: 3.93x)      n/a
"""


def test_a_report_is_read_cell_by_cell():
    tables = parse_tables(REPORT)
    assert [t.headers[0] for t in tables] == ["epoch", "run", "target"]
    assert tables[1].rows[1] == ["tudui default", "0", "1", "56.35%", "228.6 s", "0.3x", "not reached", "not reached"]
    assert tables[2].rows[2][1:] == ["median 3.93x (seeds: 3.93x)", "n/a"]
    assert figures("1,234 .. 2,345") == [(1234.0, ""), (2345.0, "")]
    assert figures("+0.30 points") == [(0.3, "points")] and figures("n/a") == []
    check_report("time_to_accuracy.py", REPORT)


@pytest.mark.parametrize("broken, why", [
    (("56.35%    228.6 s", "56.35%      nan s"), "a NaN figure"),
    (("1     52.70%", "1    152.70%"), "a share over 100%"),
    ((" 0.3x  not reached", "-0.3x  not reached"), "a negative speed-up"),
    (("tudui default     0       1     56.35%    228.6 s      0.3x  not reached  not reached\n", ""), "a row missing"),
    (("tudui default ends >= 93.0%                                median 56.35% (seeds: 56.35%)      n/a",
      "tudui default ends >= 93.0%                                median 56.35% (seeds: 56.35%)      yes"),
     "an unknown verdict"),
    (("median 3.93x (seeds: 3.93x)", "          failed to measure"), "a target without a figure"),
])
def test_a_broken_report_fails(broken, why):
    old, new = broken
    assert old in REPORT
    with pytest.raises(AssertionError):
        check_report("time_to_accuracy.py", REPORT.replace(old, new))
