"""The console entry point (``covidct``, ``python -m covidct``): the command-line interface, imported here so that
a Ctrl-C during the start-up imports (typer, numpy: up to a second on a first run) ends like any other, with one
line and exit 130 rather than a traceback, and without the interpreter's teardown waiting on a half-started thread."""

from __future__ import annotations

import os
import sys

# numpy asks the kernel for transparent huge pages for every large array (THP "madvise" mode); in one short command
# the first touch of each (compaction, zeroing 2 MB pages) costs more than the huge pages save: `analyze` P001
# 7.59 -> 7.01 s wall, 2.4 -> 1.6 s system time, 860 -> 816 MiB (docs/BENCHMARKS.md, fifteenth session). numpy
# reads this variable once, at its import; a value the user set wins.
HUGEPAGE_ENV = "NUMPY_MADVISE_HUGEPAGE"


def run() -> None:
    """Import and run :func:`covidct.cli.run`."""
    os.environ.setdefault(HUGEPAGE_ENV, "0")  # before anything imports numpy
    try:
        from covidct.cli import run as cli_run
    except KeyboardInterrupt:
        try:
            sys.stderr.write("covidct: interrupted\n")
            sys.stderr.flush()
        finally:
            os._exit(130)
    cli_run()
