"""``covidct analyze`` and ``covidct demo``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from covidct.errors import CovidCTError, UnreadableInput

if TYPE_CHECKING:
    from covidct import pipeline


def _print_summary(report: dict, outdir: Path) -> None:
    d = report["diagnosis"]
    probs = ", ".join(f"{k} {v:.2f}" for k, v in d["probabilities"].items())
    lines = [f"diagnosis: {d['label']} ({probs})"]
    pat = report.get("pattern")
    if pat:
        head = f"pattern: RSNA {pat['rsna_category']}, CO-RADS {pat['co_rads']}: {pat['reasons'][0]}"
        lines += [head] + [r for r in pat["reasons"] if r.startswith("borderline:")]  # a reading near a threshold
    if report["mode"] == "volume":
        lu, le, inv = report["lungs"], report["lesions"], report["involvement_percent"]
        lines += [
            f"lungs: left {lu['left_ml']:.0f} mL, right {lu['right_ml']:.0f} mL",
            f"lesions: GGO {le['ggo_ml']:.1f} mL, consolidation {le['consolidation_ml']:.1f} mL, effusion {le['effusion_ml']:.1f} mL",
            f"involvement: left {inv['left']:.1f} %, right {inv['right']:.1f} %, total {inv['total']:.1f} %",
            f"severity: {report['severity']['score']}/25 (Pan, six-zone approximation)",
        ]
    else:
        lines.append(f"lesion area: {report['involvement_percent']['total']:.1f} % of the lung area in this slice")
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
        if w.startswith("no DICOM SEG written"):  # an output the user asked for is missing: say so on stderr too
            typer.echo(f"covidct: warning: {w}", err=True)
    t = report["timings_s"].get("total")
    lines.append(f"report: {outdir / 'report.html'}" + (f"  ({t:.1f} s)" if t else ""))
    typer.echo("\n".join(lines))


def _shared_analyzer(model_args: dict) -> pipeline.Analyzer:
    # imported here, after the scan process is forked: the scan is read during these imports (SciPy, OpenCV: ~0.35 s)
    from covidct import pipeline

    return pipeline.shared_analyzer(**model_args)


def _analyze_one(path: Path, output: Path, series: str | None, png: bool, html: bool, model_args: dict,
                 heatmap: bool = False, fetch: Callable[[], object] | None = None):
    """One study: the scan read (``fetch``ed first) in a helper process while the models load; the Analysis."""
    # imported here, not with the command table: it brings numpy, which `covidct --help` does not need
    from covidct.commands.scan_process import ScanProcess, gc_paused

    with gc_paused(), ScanProcess() as helper:
        ct, analyzer = helper.load_beside(path, lambda: _shared_analyzer(model_args), series, fetch)
        return analyzer(ct, output, png=png, html=html, seg_writer=helper.seg_writer(ct), heatmap=heatmap)


def _analyze_from_pacs(inputs, url, study, series, push, output: Path, pacs_args: dict, *, png: bool, html: bool,
                       model_args: dict, heatmap: bool = False) -> None:
    """``analyze --pacs URL --study UID [--series UID] [--push]``."""
    import functools

    from covidct.pacs.client import settings_from
    from covidct.pacs.study import SR_FILE, finish_results, push_finished
    from covidct.pacs.transfer import check_uid, download_series, pulled_study

    if inputs:
        raise typer.BadParameter("give either INPUT... or --pacs with --study, not both", param_hint="INPUT...")
    if url is None:
        raise typer.BadParameter("--study and --push need --pacs URL", param_hint="--pacs")
    if study is None:
        raise typer.BadParameter("--pacs needs --study UID (the StudyInstanceUID to analyse)", param_hint="--study")
    settings = settings_from(url, **pacs_args)
    study = check_uid(study, "--study")
    series = check_uid(series, "--series") if series is not None else None
    # the download runs in the scan process, beside the models' loading
    with pulled_study(settings, study, series, fetch=False) as (folder, wanted):
        fetch = functools.partial(download_series, settings, study, wanted, folder)
        res = _analyze_one(folder, output, series, png, html, model_args, heatmap, fetch)
        sources = res.ct.meta.get("_source_headers")
        if push:
            pushed = push_finished(settings, study, output, folder, sources=sources)
        else:
            finish_results(output, folder, sources)
    _print_summary(res.report, output)
    typer.echo(f"DICOM SR: {output / SR_FILE}" + (f"; stored SEG + SR ({len(pushed)} instances) in study {study}"
                                                   if push else ""))


def register(app: typer.Typer) -> None:
    @app.command()
    def analyze(
        inputs: list[Path] = typer.Argument(None, metavar="INPUT...", help="DICOM folder/.zip, NIfTI, NRRD, MetaImage (.mha/.mhd), slice image, or a folder of studies (or --pacs)."),
        output: Path = typer.Option(..., "-o", "--output", help="Output folder (one input: files go directly here; several: one sub-folder per study)."),
        png: bool = typer.Option(False, "--png", help="Also write an overlay PNG for every slice with lung or lesion."),
        html: bool = typer.Option(True, "--html/--no-html", help="Write report.html."),
        heatmap: bool = typer.Option(False, "--heatmap", help="Also write the lesion probability: "
                                     "lesion_probability.nii.gz on the input's grid and heatmap/heatmap_NNNN.png "
                                     "overlays at each slice's size (a 2-D image: lesion_probability.png, heatmap.png)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Parallel worker processes for several studies."),
        dask: str = typer.Option(None, "--dask", metavar="ADDRESS", help="Run studies on an existing Dask cluster (scheduler address)."),
        lungs_model: str = typer.Option("lungs", "--lungs-model", help="Shipped model name, checkpoint (.pt) or run folder for the lungs."),
        lesions_model: str = typer.Option("lesions", "--lesions-model", "--model", help="Shipped model name, checkpoint or run folder for the lesions."),
        seg_new_uids: bool = typer.Option(False, "--seg-new-uids", help="When the source series' UIDs are blank or duplicated (de-identified), also write a copy of the series with fresh UIDs (ct_new_uids/) and a DICOM SEG referencing it; without this flag no SEG is written then."),
        series: str = typer.Option(None, "--series", metavar="UID", help="For one DICOM folder/.zip holding several series: the SeriesInstanceUID to analyse (default: the best CT series; `covidct info` lists them)."),
        pacs: str = typer.Option(None, "--pacs", metavar="URL", help="Take the study from this PACS's DICOMweb root (e.g. http://127.0.0.1:8042/dicom-web) instead of INPUT; needs --study. Credentials: see 'covidct watch --help'."),
        study: str = typer.Option(None, "--study", metavar="UID", help="With --pacs: the StudyInstanceUID to analyse."),
        push: bool = typer.Option(False, "--push", help="With --pacs: store the DICOM SEG and the DICOM SR (report.sr.dcm) back into the same study."),
        auth_file: Path = typer.Option(None, "--auth-file", help="With --pacs: JSON file with {\"token\": ...} or {\"username\": ..., \"password\": ...}."),
        insecure: bool = typer.Option(False, "--insecure", help="With --pacs: do not verify the PACS's TLS certificate."),
        ca_bundle: Path = typer.Option(None, "--ca-bundle", help="With --pacs: CA certificate file to verify the PACS's TLS certificate with."),
        timeout: float = typer.Option(30.0, "--timeout", min=1, help="With --pacs: seconds to wait for each PACS answer."),
        view: str = typer.Option("auto", "--view", help="auto: a slice image stored transposed (its two lungs one "
                                 "above the other) is analysed in the radiological view, its masks written back in "
                                 "the image's layout, and the report says so; as-is: every image as given."),
        crop_model: bool = typer.Option(True, "--crop-model/--no-crop-model", help="A slice image cut tight around "
                                        "its lungs (they fill 93 % or more of it, as in Inf-Net's and COVID-CT's "
                                        "crops) is read by the lesion models' crop versions (infection-crops, "
                                        "lesions-crops), which learnt such crops, and the report says so; "
                                        "--no-crop-model: by the models themselves."),
        ggo_floor_follows_lung: bool = typer.Option(False, "--ggo-floor-follows-lung", help="For a scan at a shallow breath or on expiration (the report warns when the lung is denser than in full inspiration): raise the GGO floor by as much as the best-aerated lung is denser, so that healthy lung is not counted as GGO. Not for disease over most of the lung: its faint GGO is then missed."),
    ) -> None:
        """Analyse chest CTs: diagnosis, lung and lesion masks, severity, JSON/HTML/NIfTI/DICOM SEG outputs.

        Outputs in OUTDIR: lungs.nii.gz (1 left, 2 right), lesions.nii.gz (1 GGO, 2 consolidation,
        3 effusion), segmentation.dcm (DICOM input), report.json, report.html; a single image gives
        lungs.png / lesions.png / overlay.png instead. Several studies: OUTDIR/<study>/ each, plus
        OUTDIR/summary.csv; finished studies are skipped (resume) and a failing one does not stop the rest.
        """
        from covidct.batch import discover_studies, run_batch
        from covidct.slice_view import VIEWS

        if view not in VIEWS:
            raise typer.BadParameter(f"must be one of {', '.join(VIEWS)}", param_hint="--view")
        model_args = {"lungs_model": lungs_model, "lesions_model": lesions_model, "ggo_floor_follows_lung": ggo_floor_follows_lung}
        if view != "auto":  # only then: the default shares the Analyzer other callers of shared_analyzer() get
            model_args["slice_view"] = view
        if not crop_model:
            model_args["crop_models"] = False
        if pacs is not None or study is not None or push:
            pacs_args = {"auth_file": auth_file, "insecure": insecure, "ca_bundle": ca_bundle, "timeout": timeout}
            _analyze_from_pacs(inputs, pacs, study, series, push, output, pacs_args, png=png, html=html,
                               model_args=model_args, heatmap=heatmap)
            return
        if not inputs:
            raise typer.BadParameter("give at least one INPUT (or --pacs URL --study UID)", param_hint="INPUT...")
        if seg_new_uids:  # read by the SEG writer, in whichever process (scan process, batch worker) writes it
            from covidct.report.dicom_copy import NEW_UIDS_ENV

            os.environ[NEW_UIDS_ENV] = "1"
        single = len(inputs) == 1
        studies = discover_studies(inputs)
        one_study = single and len(studies) == 1 and not dask
        if series is not None and not one_study:
            raise typer.BadParameter("--series picks the series of one DICOM input; give a single folder or .zip")
        if one_study:
            if not inputs[0].exists():
                raise UnreadableInput(f"{inputs[0]}: no such file or folder")
            _print_summary(_analyze_one(inputs[0], output, series, png, html, model_args, heatmap).report, output)
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

            rows = run_batch(studies, output, workers=workers, dask_address=dask, png=png, html=html, model_args=model_args,
                             progress=progress, heatmap=heatmap)
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
        typer.echo(f"(phantom truth: involvement {ph.truth['involvement_percent']['total']:.1f} %)")
        sys.stdout.flush()
