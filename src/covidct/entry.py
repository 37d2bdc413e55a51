"""The console entry point (``covidct``, ``python -m covidct``): the command-line interface, imported here so that
a Ctrl-C during the start-up imports (typer, numpy: up to a second on a first run) ends like any other, with one
line and exit 130 rather than a traceback, and without the interpreter's teardown waiting on a half-started thread."""

from __future__ import annotations

import os
import sys


def run() -> None:
    """Import and run :func:`covidct.cli.run`."""
    try:
        from covidct.cli import run as cli_run
    except KeyboardInterrupt:
        try:
            sys.stderr.write("covidct: interrupted\n")
            sys.stderr.flush()
        finally:
            os._exit(130)
    cli_run()
