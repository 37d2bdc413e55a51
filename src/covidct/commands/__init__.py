"""Sub-commands that plug into ``covidct`` (see :func:`covidct.cli._register_optional_commands`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from covidct.commands import analyze

    analyze.register(app)
    for name in ("segment", "train_eval", "classify", "serve", "refine", "pacs", "explain", "compare"):
        try:
            mod = __import__(f"covidct.commands.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"covidct.commands.{name}":
                raise
            continue
        mod.register(app)
