"""``covidct analyze`` and ``covidct demo``."""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from covidct.commands import scan_transfer
from covidct.errors import CovidCTError, UnreadableInput
from covidct.interrupts import leave_stops_to_the_parent, stop_signals_held

if TYPE_CHECKING:
    from covidct import pipeline
    from covidct.volume import CT

T = TypeVar("T")


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


def _load_timed(path: Path, series: str | None = None, fetch: Callable[[], object] | None = None):
    """``load_ct`` with its duration in ``meta["_load_seconds"]`` (the report's load time); ``fetch`` (e.g. a
    PACS download into ``path``) runs first and counts as loading."""
    import time

    from covidct.io import load_ct

    t0 = time.perf_counter()
    if fetch is not None:
        fetch()
    ct = load_ct(path, series=series)
    ct.meta["_load_seconds"] = time.perf_counter() - t0
    return ct


# In the forked scan process: the scan it read, kept (without its voxels) for the DICOM SEG.
_SCAN: CT | None = None
# Shared memory the parent maps before the fork, for the scan's voxels (covidct.commands.scan_transfer).
_VOXELS: mmap.mmap | None = None


def _keep_freed_memory() -> None:
    """glibc: keep freed memory in this process's heap rather than handing it back to the system.

    Decoding's large arrays then reuse pages instead of faulting in fresh ones. Only for the short-lived
    scan process, which hands it all back once the scan is sent (``scan_transfer.trim_heap``): the SEG alone needs
    about 600 MB for P001, and on top of the decoding's kept pages the process peaked above 1 GB.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: large blocks from the heap, not mmap
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: do not give the heap's top back
    except (OSError, AttributeError):
        pass


def _scan_process_start(parent: int) -> None:
    """In the scan process, first: Ctrl-C is the parent's to handle (it stops this process), and this
    process dies with the parent, whatever kills it; otherwise an aborted parent left it holding the
    terminal's pipes open forever."""
    import ctypes
    import gc
    import signal

    # No garbage collector here: its collections over pydicom's and highdicom's many small objects took about 0.5 s
    # of this process's CPU per scan (P001: 830 collections), beside the networks' work. This process reads one scan
    # and writes one SEG, then ends; the decoding's few reference cycles are collected once (_scan_process_load).
    gc.disable()
    leave_stops_to_the_parent()
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _scan_process_load(path: Path, series: str | None = None, fetch: Callable[[], object] | None = None) -> bytes:
    """The scan (``fetch`` fills ``path`` first), pickled here: the parent unpickles it in its main thread (see
    ``load_beside``)."""
    global _SCAN, _VOXELS
    import dataclasses
    import gc

    import numpy as np

    from covidct.io import decode_split

    _keep_freed_memory()
    decode_split.enable(region=_VOXELS)  # single-threaded, the parent waits: decode in two, into the parent's region
    ct = _load_timed(path, series, fetch)
    # The SEG needs the headers and geometry, not the HU values: a zero-stride stand-in of the same shape.
    _SCAN = dataclasses.replace(ct, array=np.broadcast_to(np.float32(0), ct.shape))
    data = scan_transfer.pack(ct, _VOXELS)
    del ct
    gc.collect()  # the decoding's reference cycles hold pixel buffers (without this, the process peaked 150 MB higher)
    scan_transfer.trim_heap(_VOXELS)
    _VOXELS = None
    return data


def _scan_process_prepare() -> None:
    """The SEG writer's imports and one-off costs, paid while the other process segments the lungs."""
    if _SCAN is not None and _SCAN.kind == "dicom":
        from covidct.report.dicomseg import prepare_dicom_seg

        try:
            prepare_dicom_seg(_SCAN)
        except ValueError:  # reported by the real SEG writer, in its place
            pass


def _scan_process_write_seg(masks: tuple, path: Path) -> Path:
    """``masks``: the final lungs and lesions as cropped by ``scan_transfer.crop_masks``."""
    from covidct.report.dicomseg import write_dicom_seg

    if _SCAN is None:
        raise RuntimeError("the scan process holds no scan")
    return write_dicom_seg(_SCAN, *scan_transfer.uncrop_masks(masks), path)


# What the analysing process imports anyway after the scan arrives (unpickling its DICOM headers, the output writers,
# the report page, the report's validation): P001 about 0.3 s, otherwise spent after the wait for the scan. Not
# matplotlib (0.1 s): its 23 MB would be held through the lung stage, the analysing process's memory peak.
_LATER_IMPORTS = ("pydicom", "covidct.io.dicom", "nibabel", "covidct.io.writers", "jsonschema", "skimage.segmentation",
                  "covidct.report.html")


def _import_while(waiting: Callable[[], bool], names: Sequence[str]) -> None:
    """Import ``names`` one by one, in this thread, as long as ``waiting()`` (this process would sit idle otherwise)."""
    import importlib

    for name in names:
        if not waiting():
            return
        try:
            importlib.import_module(name)
        except ImportError:  # an optional package missing: whoever needs it says so, later
            pass


class _ScanProcess:
    """A forked helper process that reads the scan while torch, MONAI and the models load, then writes
    the DICOM SEG from its own copy of the headers while this process finishes the report.

    pydicom's parsing, highdicom's SEG encoding and the imports all hold the GIL most of the time,
    so threads overlapped them little (P001: models and scan ready at 4.3 s with a thread, 2.6 s with
    this process). The fork happens before torch is imported, so no torch thread pools are copied.
    Where the platform does not fork, or if the child dies, the work falls back to this process.
    """

    def __init__(self, fork: bool | None = None) -> None:
        """``fork``: None forks where the platform can and torch is not yet imported; True/False force it."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = self.waiter = None
        self.children: list = []  # the forked process, to stop it after an error or Ctrl-C
        if fork is None:
            fork = "fork" in multiprocessing.get_all_start_methods() and sys.platform != "darwin" and "torch" not in sys.modules
        if fork:
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_scan_process_start, initargs=(os.getpid(),))

    def __enter__(self) -> _ScanProcess:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # After an error or Ctrl-C, do not wait for the child's task: stop the child (it ignores Ctrl-C, and
        # dies with this process in any case, see _scan_process_start).
        wait = exc_type is None
        if not wait:
            for child in self.children:  # it would otherwise keep the terminal's pipes open
                child.terminate()
        if self.waiter is not None:
            self.waiter.shutdown(wait=wait, cancel_futures=True)
        if self.pool is not None:
            self.pool.shutdown(wait=wait, cancel_futures=True)

    def load_beside(self, path: Path, work: Callable[[], T], series: str | None = None,
                    fetch: Callable[[], object] | None = None) -> tuple[CT, T]:
        """The scan at ``path`` (``series``: its series UID; ``fetch``: fills ``path`` first, e.g. from a PACS),
        read while ``work()`` runs here, and ``work()``'s result."""
        from concurrent.futures import ThreadPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        if self.pool is None:
            with ThreadPoolExecutor(max_workers=1) as threads:
                loading = threads.submit(_load_timed, path, series, fetch)
                with stop_signals_held():
                    result = work()
                return loading.result(), result
        import multiprocessing

        global _VOXELS
        before = set(multiprocessing.active_children())
        region = _VOXELS = scan_transfer.new_region()  # before the fork, which the first submit does
        with stop_signals_held():
            loading = self.pool.submit(_scan_process_load, path, series, fetch)  # the first submit forks the process
            _VOXELS = None
            self.children = [c for c in multiprocessing.active_children() if c not in before]
            self.pool.submit(_scan_process_prepare)  # the SEG writer's imports, while the lungs are segmented
            result = work()
            _import_while(lambda: not loading.done(), _LATER_IMPORTS)
        try:
            # Unpickled here, after ``work()``: the pool's own thread would unpickle the pydicom values while
            # this thread imports MONAI (which imports pydicom), and two threads importing pydicom at once
            # failed 1 run in ~5 with "partially initialized module 'pydicom' has no attribute 'valuerep'".
            return scan_transfer.unpack(loading.result(), region), result
        except BrokenProcessPool:  # the child was killed (e.g. out of memory): read it here instead
            self.pool.shutdown(wait=False)
            self.pool = None
            return _load_timed(path, series, fetch), result

    def seg_writer(self, ct: CT) -> pipeline.SegWriter | None:
        """Writes ``ct``'s SEG in the scan process (None: let the pipeline write it here)."""
        from concurrent.futures import ThreadPoolExecutor

        if self.pool is None:
            return None
        self.waiter = ThreadPoolExecutor(max_workers=1)
        return lambda lungs, lesions, path: self.waiter.submit(self._write_seg, ct, lungs, lesions, path)

    def _write_seg(self, ct: CT, lungs, lesions, path: Path) -> Path:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.pool.submit(_scan_process_write_seg, scan_transfer.crop_masks(lungs, lesions), path).result()
        except BrokenProcessPool:  # the child was killed: write it here after all
            from covidct.report.dicomseg import write_dicom_seg

            return write_dicom_seg(ct, lungs, lesions, path)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Python's garbage collector off for one study, as it was after. Its passes over the many small objects of a
    scan's DICOM headers found next to no garbage (reference cycles) and took about 0.75 s of CPU per study over the
    three processes (P001; the forked processes inherit the pause: see _scan_process_start); the arrays are
    freed by reference counting either way."""
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _shared_analyzer(model_args: dict) -> pipeline.Analyzer:
    # imported here, after the scan process is forked: the scan is read during these imports (SciPy, OpenCV: ~0.35 s)
    from covidct import pipeline

    return pipeline.shared_analyzer(**model_args)


def _analyze_one(path: Path, output: Path, series: str | None, png: bool, html: bool, model_args: dict,
                 heatmap: bool = False, fetch: Callable[[], object] | None = None):
    """One study: the scan read (``fetch``ed first) in a helper process while the models load; the Analysis."""
    with _gc_paused(), _ScanProcess() as helper:
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
        inputs: list[Path] = typer.Argument(None, metavar="INPUT...", help="DICOM folder/.zip, NIfTI, slice image, or a folder of studies (or --pacs)."),
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
        ggo_floor_follows_lung: bool = typer.Option(False, "--ggo-floor-follows-lung", help="For a scan at a shallow breath or on expiration (the report warns when the lung is denser than in full inspiration): raise the GGO floor by as much as the best-aerated lung is denser, so that healthy lung is not counted as GGO. Not for disease over most of the lung: its faint GGO is then missed."),
    ) -> None:
        """Analyse chest CTs: diagnosis, lung and lesion masks, severity, JSON/HTML/NIfTI/DICOM SEG outputs.

        Outputs in OUTDIR: lungs.nii.gz (1 left, 2 right), lesions.nii.gz (1 GGO, 2 consolidation,
        3 effusion), segmentation.dcm (DICOM input), report.json, report.html; a single image gives
        lungs.png / lesions.png / overlay.png instead. Several studies: OUTDIR/<study>/ each, plus
        OUTDIR/summary.csv; finished studies are skipped (resume) and a failing one does not stop the rest.
        """
        from covidct.batch import discover_studies, run_batch

        model_args = {"lungs_model": lungs_model, "lesions_model": lesions_model, "ggo_floor_follows_lung": ggo_floor_follows_lung}
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
