"""Shared helpers of the benchmark scripts."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from typing import Callable

# The scripts build random checkpoints with the test suite's helper (no downloads).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
