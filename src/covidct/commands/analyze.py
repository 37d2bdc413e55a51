"""``covidct analyze`` and ``covidct demo``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from covidct.errors import CovidCTError, UnreadableInput


def _print_summary(report: dict, outdir: Path) -> None:
    d = report["diagnosis"]
    probs = ", ".join(f"{k} {v:.2f}" for k, v in d["probabilities"].items())
    lines = [f"diagnosis: {d['label']} ({probs})"]
    if report["mode"] == "volume":
        lu, le, inv = report["lungs"], report["lesions"], report["involvement_percent"]
        lines += [
            f"lungs: left {lu['left_ml']:.0f} mL, right {lu['right_ml']:.0f} mL",
            f"lesions: GGO {le['ggo_ml']:.1f} mL, consolidation {le['consolidation_ml']:.1f} mL, effusion {le['effusion_ml']:.1f} mL",
            f"involvement: left {inv['left']:.1f} %, right {inv['right']:.1f} %, total {inv['total']:.1f} %",
            f"severity: {report['severity']['score']}/25 (Pan, six-zone approximation)",
        ]
    else:
        inv = report["involvement_percent"]
        lines.append(f"lesion area: {inv['total']:.1f} % of the lung area in this slice")
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    t = report["timings_s"].get("total")
    lines.append(f"report: {outdir / 'report.html'}" + (f"  ({t:.1f} s)" if t else ""))
    typer.echo("\n".join(lines))


def _load_timed(path: Path):
    """``load_ct`` with its duration in ``meta["_load_seconds"]`` (the report's load time)."""
    import time

    from covidct.io import load_ct

    t0 = time.perf_counter()
    ct = load_ct(path)
    ct.meta["_load_seconds"] = time.perf_counter() - t0
    if ct.kind == "dicom":  # the DICOM SEG writer's library, imported while the models are still loading
        import highdicom  # noqa: F401
    return ct


def register(app: typer.Typer) -> None:
    @app.command()
    def analyze(
        inputs: list[Path] = typer.Argument(..., metavar="INPUT...", help="DICOM folder/.zip, NIfTI, slice image, or a folder of studies."),
        output: Path = typer.Option(..., "-o", "--output", help="Output folder (one input: files go directly here; several: one sub-folder per study)."),
        png: bool = typer.Option(False, "--png", help="Also write an overlay PNG for every slice with lung or lesion."),
        html: bool = typer.Option(True, "--html/--no-html", help="Write report.html."),
        workers: int = typer.Option(1, "--workers", min=1, help="Parallel worker processes for several studies."),
        dask: str = typer.Option(None, "--dask", metavar="ADDRESS", help="Run studies on an existing Dask cluster (scheduler address)."),
        lungs_model: str = typer.Option("lungs", "--lungs-model", help="Shipped model name, checkpoint (.pt) or run folder for the lungs."),
        lesions_model: str = typer.Option("lesions", "--lesions-model", "--model", help="Shipped model name, checkpoint or run folder for the lesions."),
    ) -> None:
        """Analyse chest CTs: diagnosis, lung and lesion masks, severity, JSON/HTML/NIfTI/DICOM SEG outputs.

        Outputs in OUTDIR: lungs.nii.gz (1 left, 2 right), lesions.nii.gz (1 GGO, 2 consolidation,
        3 effusion), segmentation.dcm (DICOM input), report.json, report.html; a single image gives
        lungs.png / lesions.png / overlay.png instead. Several studies: OUTDIR/<study>/ each, plus
        OUTDIR/summary.csv; finished studies are skipped (resume) and a failing one does not stop the rest.
        """
        from covidct.batch import discover_studies, run_batch

        model_args = {"lungs_model": lungs_model, "lesions_model": lesions_model}
        single = len(inputs) == 1
        studies = discover_studies(inputs)
        if single and len(studies) == 1 and not dask:
            from concurrent.futures import ThreadPoolExecutor

            from covidct import pipeline

            if not inputs[0].exists():
                raise UnreadableInput(f"{inputs[0]}: no such file or folder")
            # Read the scan while torch, MONAI and the models load: decoding compressed DICOM slices
            # releases the GIL, so the two overlap on a multi-core machine.
            with ThreadPoolExecutor(max_workers=1) as pool:
                loading = pool.submit(_load_timed, inputs[0])
                analyzer = pipeline.shared_analyzer(**model_args)
                ct = loading.result()
            res = pipeline.analyze(ct, output, analyzer=analyzer, png=png, html=html)
            _print_summary(res.report, output)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        failed = 0
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task("analysing studies", total=len(studies))

            def progress(row: dict) -> None:
                nonlocal failed
                bar.advance(task)
                if row["status"] == "failed":
                    failed += 1
                    bar.console.print(f"[red]failed[/red] {row['study']}: {row['error']}")

            rows = run_batch(studies, output, workers=workers, dask_address=dask, png=png, html=html, model_args=model_args, progress=progress)
        done = sum(r["status"] == "done" for r in rows)
        skipped = sum(r["status"].startswith("skipped") for r in rows)
        typer.echo(f"{done} analysed, {skipped} already done, {failed} failed; summary: {output / 'summary.csv'}")
        if failed:
            raise CovidCTError(f"{failed} of {len(rows)} studies failed (see {output / 'summary.csv'})")

    @app.command()
    def demo(
        output: Path = typer.Option(Path("covidct-demo"), "-o", "--output", help="Where to write the demo input and results."),
        seed: int = typer.Option(0, "--seed", help="Phantom seed."),
    ) -> None:
        """Analyse a built-in synthetic chest CT (written as a DICOM series) and say where the report is."""
        from covidct import pipeline
        from covidct.phantom import make_phantom, write_phantom

        ph = make_phantom(shape=(64, 256, 256), spacing=(5.0, 1.4, 1.4), seed=seed, lesion_burden=0.12, margin_slices=6)
        series = write_phantom(ph, output / "input", fmt="dicom")
        typer.echo(f"demo input: synthetic chest CT, DICOM series in {series}")
        res = pipeline.analyze(series, output / "results")
        _print_summary(res.report, output / "results")
        truth = ph.truth["involvement_percent"]["total"]
        typer.echo(f"(phantom truth: involvement {truth:.1f} %)")
        sys.stdout.flush()
