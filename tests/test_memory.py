"""tests/memory.py, the memory-bound tests' measure: a known allocation is seen at its size by both of its ways (the
kernel's peak, VmHWM, and the sampling thread), and nothing is seen where nothing was allocated."""
import numpy as np

from tests import memory


def allocate_200_mib():
    block = np.ones(200 * 2**20 // 8)  # touched: resident, then freed before the call returns
    return float(block[-1])


def test_the_kernels_peak_sees_an_allocation_freed_before_the_call_returned():
    assert memory._reset_peak_rss()  # Linux: the suite's memory bounds rely on it
    out, grown = memory.peak_rss_growth_mb(allocate_200_mib)
    assert out == 1.0 and 190 <= grown <= 260
    assert memory.peak_rss_growth_mb(lambda: None)[1] < 20


def test_the_sampling_thread_sees_it_too():
    resident = lambda: memory._status_kb("VmRSS") * 1024  # noqa: E731 - a measure as the tests pass one
    out, grown = memory.peak_rss_growth_mb(allocate_200_mib, measure=resident)
    assert out == 1.0 and 190 <= grown <= 260
