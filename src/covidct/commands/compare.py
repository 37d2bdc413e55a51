"""``covidct compare``: a follow-up scan beside an earlier one, from their reports."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def compare(
        before: Path = typer.Argument(..., metavar="BEFORE", help="The earlier scan's analyze output folder or report.json."),
        after: Path = typer.Argument(..., metavar="AFTER", help="The later scan's analyze output folder or report.json."),
        as_json: Path = typer.Option(None, "--json", metavar="FILE", help="Also write the comparison as JSON to FILE."),
    ) -> None:
        """Follow-up: lung and lesion volumes, involvement per lung and zone, severity, pattern, diagnosis and lung
        density of two reports of one patient, with each change. Example:

        \b
        covidct analyze day0/ -o out0
        covidct analyze day7/ -o out7
        covidct compare out0 out7

        Report figures only (the scans are not registered); warnings say when they are not comparable (other
        patients, other slice thickness, a scan that cuts the lungs)."""
        import json
        import os
        import tempfile

        from covidct.report.compare import compare_reports, format_table, load_report

        result = compare_reports(load_report(before), load_report(after))
        typer.echo(format_table(result))
        if as_json is not None:
            as_json.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".compare-", suffix=".json", dir=as_json.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(result, f, indent=1)
                os.replace(tmp, as_json)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
