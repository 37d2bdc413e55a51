"""One call run beside the caller's own work, on the other core.

Why threads suffice: the pipeline's heavy steps are SciPy filters and labelling, OpenCV and NumPy, which release
the GIL (SciPy 1.17: two threads of erosion, labelling or distance transforms take about half the time of one
after the other; docs/BENCHMARKS.md, eighteenth session).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


def beside(fn: Callable, *args, **kwargs) -> Future:
    """``fn(*args, **kwargs)`` started in a thread of its own; the Future gives its result or raises its exception.
    The thread ends with the call, whether or not the result is ever asked for."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(fn, *args, **kwargs)
    finally:
        pool.shutdown(wait=False)
