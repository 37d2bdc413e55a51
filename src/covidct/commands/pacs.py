"""``covidct watch``: analyse every new CT study of a PACS once and store the results back into it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import typer

_AUTH_HELP = (
    "Credentials come from the environment (COVIDCT_PACS_TOKEN for a bearer token, or COVIDCT_PACS_USER and "
    "COVIDCT_PACS_PASSWORD for HTTP basic) or from --auth-file / COVIDCT_PACS_AUTH_FILE (JSON: "
    '{"token": ...} or {"username": ..., "password": ...}); they are never printed. TLS certificates are '
    "verified unless --insecure."
)


def register(app: typer.Typer) -> None:
    @app.command(help=(
        "Watch a PACS: analyse each new CT study once and store the DICOM SEG and SR back into it.\n\n"
        "Polls QIDO-RS every --interval seconds for studies with a CT series; claims, analyses (the usual "
        "outputs in OUTDIR/<StudyInstanceUID>/), pushes (STOW-RS) and records each. The state folder "
        "(default OUTDIR/.covidct-watch) makes a restart resume without re-analysing or skipping a study, and "
        "lets several watchers (--workers, --dask, or more machines sharing the folder) drain one PACS "
        "without double work; a failing study is recorded and the rest go on. Ctrl-C or SIGTERM stops "
        "cleanly (studies in progress are given back).\n\n" + _AUTH_HELP
    ))
    def watch(
        pacs: str = typer.Option(..., "--pacs", metavar="URL", help="The PACS's DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web."),
        output: Path = typer.Option(..., "-o", "--output", help="Output folder: one sub-folder per study."),
        state: Path = typer.Option(None, "--state", help="State folder (default OUTDIR/.covidct-watch); share it between watchers."),
        interval: float = typer.Option(30.0, "--interval", min=0.1, help="Seconds between polls."),
        once: bool = typer.Option(False, "--once", help="Process what is there now, then exit (for cron jobs)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Parallel worker processes."),
        dask: str = typer.Option(None, "--dask", metavar="ADDRESS", help="Run studies on an existing Dask cluster (scheduler address)."),
        push: bool = typer.Option(True, "--push/--no-push", help="Store SEG + SR back into each study."),
        since: str = typer.Option(None, "--since", metavar="YYYYMMDD", help="First run: take studies from this StudyDate on (default: today; later runs: the saved watermark)."),
        lookback_days: int = typer.Option(2, "--lookback-days", min=0, help="Also look this many days before the watermark (studies that reach the PACS late)."),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="Try studies that failed before again."),
        claim_timeout: float = typer.Option(7200.0, "--claim-timeout", min=60, help="Seconds after which another host's claim on a study counts as abandoned."),
        auth_file: Path = typer.Option(None, "--auth-file", help="JSON credentials file (see above)."),
        insecure: bool = typer.Option(False, "--insecure", help="Do not verify the PACS's TLS certificate."),
        ca_bundle: Path = typer.Option(None, "--ca-bundle", help="CA certificate file for the PACS's TLS certificate."),
        timeout: float = typer.Option(30.0, "--timeout", min=1, help="Seconds to wait for each PACS answer."),
        html: bool = typer.Option(True, "--html/--no-html", help="Write report.html for each study."),
    ) -> None:
        from covidct.errors import PacsError
        from covidct.interrupts import set_interrupt_hint
        from covidct.pacs.client import settings_from
        from covidct.pacs.watch import watch as run_watch

        if since is not None:
            try:
                datetime.strptime(since, "%Y%m%d")
            except ValueError as exc:
                raise PacsError(f"--since {since!r} is not a date YYYYMMDD") from exc
        settings = settings_from(pacs, auth_file=auth_file, insecure=insecure, ca_bundle=ca_bundle, timeout=timeout)
        state_dir = state or output / ".covidct-watch"
        set_interrupt_hint(f"state kept in {state_dir}; run the same command to resume")

        def log(line: str) -> None:
            typer.echo(f"{datetime.now().strftime('%Y-%m-%d %H:%M:%S')} {line}")

        counts = run_watch(settings, output, state_dir=state_dir, interval=interval, once=once, workers=workers,
                           dask_address=dask, push=push, since=since, lookback_days=lookback_days,
                           retry_failed=retry_failed, claim_timeout=claim_timeout, html=html, log=log)
        log(f"{counts['done']} analysed, {counts['skipped']} already in the PACS, {counts['failed']} failed")
