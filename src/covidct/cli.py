"""The ``covidct`` command line: a thin layer over the Python API.

Every user error (a :class:`covidct.errors.CovidCTError`) becomes one line on stderr,
``covidct: error: <message>``, and the documented exit code; no traceback reaches a user.
Exit codes: 0 ok, 1 other covidct error, 2 unreadable input, 3 not CT, 4 inconsistent series,
5 unsupported input, 6 no lungs found, 7 model error, 8 config error, 9 PACS error, 10 unsafe archive (zip
bomb, nested, path traversal), 11 implausible image (mostly NaN/Inf, constant, no CT intensities), 64 bad
command-line usage,
70 internal error (a bug: please report it, with ``COVIDCT_DEBUG=1`` for the traceback), 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM, e.g. from ``timeout`` or a job scheduler; cleaned up like Ctrl-C).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from covidct import __version__
from covidct.errors import CovidCTError
from covidct.interrupts import interrupt_hint, stop_cleanly_on_sigterm, was_terminated

app = typer.Typer(
    name="covidct",
    help=(
        "COVID-19 chest CT analysis on an ordinary CPU.\n\n"
        "Give it a DICOM series (folder or .zip), a NIfTI volume or a slice image, or a study in a PACS "
        "(analyze --pacs URL --study UID; watch --pacs URL).\n\n"
        "Start with:  covidct demo   (runs the analysis on a built-in synthetic chest CT)\n\n"
        "Then:        covidct info SCAN       what covidct sees in your input\n\n"
        "Exit codes: 0 ok, 2 unreadable input, 3 not CT, 4 inconsistent series, 5 unsupported input, "
        "6 no lungs found, 7 model error, 8 config error, 9 PACS error, 10 unsafe archive, 11 implausible image, "
        "64 usage error, 130 interrupted, 143 terminated."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain click help: typer's rich formatting imports rich's markdown and traceback modules (~0.17 s of the 0.4 s
    # a `covidct --help` took in a slow period, docs/BENCHMARKS.md); the texts are the same
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"covidct {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """COVID-19 chest CT analysis."""


def _fmt_float(x: float) -> str:
    return f"{x:.4g}"


@app.command()
def info(
    input: Path = typer.Argument(..., help="A DICOM folder or .zip, a DICOM file, a NIfTI file, or a PNG/JPG slice."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    series: str = typer.Option(None, "--series", metavar="UID", help="For a DICOM folder/.zip with several series: the SeriesInstanceUID to show."),
) -> None:
    """Show what covidct reads from INPUT: kind, modality, shape, spacing, HU range, orientation, series, warnings."""
    import numpy as np

    from covidct.io import load_ct

    ct = load_ct(input, series=series)
    arr = ct.array
    z_order = "n/a"
    if len(ct.slices) > 1:
        zs = [s.z_mm for s in ct.slices]
        z_order = "increasing (feet → head)" if all(b > a for a, b in zip(zs, zs[1:], strict=False)) else "NOT monotonic"
    summary = {
        "input": str(input),
        "kind": ct.kind,
        "modality": ct.meta.get("modality"),
        "intensities": "HU" if ct.is_hu else "8-bit display (not HU)",
        "shape_zyx": list(ct.shape),
        "n_slices": ct.n_slices,
        "spacing_mm_zyx": [round(float(s), 4) for s in ct.spacing] if ct.spacing_known else None,
        "value_range": [float(np.min(arr)), float(np.max(arr))],
        "orientation": "canonical: columns R→L, rows A→P, slices I→S" if ct.kind != "image" else "as given (2-D image)",
        "slice_order": z_order,
        "series_uid": ct.meta.get("series_uid"),
        "patient_id": ct.meta.get("patient_id"),
        "study_date": ct.meta.get("study_date"),
        "slice_thickness_mm": ct.meta.get("slice_thickness"),
        "patient_position": ct.meta.get("patient_position"),
        "warnings": list(ct.warnings),
    }
    if ct.meta.get("source_frames"):  # one multi-frame file (Enhanced CT)
        summary["frames"] = f"{len(ct.meta['source_frames'])} slices from the frames of one multi-frame file"
    if not ct.is_hu and ct.n_slices >= 3:  # a whole display-range volume: whether analyze can undo its window
        summary["hu_map"] = _hu_map(ct)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for k, v in summary.items():
        if k == "warnings":
            continue
        if isinstance(v, list):
            v = " × ".join(_fmt_float(x) for x in v) if k != "value_range" else f"{_fmt_float(v[0])} .. {_fmt_float(v[1])}"
        table.add_row(f"[bold]{k}[/bold]", "—" if v is None else str(v))
    console = Console()
    console.print(table)
    for w in ct.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


def _hu_map(ct) -> str:
    """What ``analyze`` does with a whole display-range volume's intensities (covidct.pipeline.load.display_to_hu)."""
    from covidct.errors import UnsupportedInput
    from covidct.pipeline.load import display_to_hu

    try:
        mapped, _ = display_to_hu(ct, stop_unless_mapped=True)
    except UnsupportedInput as exc:
        return f"none, analyze stops: {exc}"
    w = mapped.meta.get("display_window")
    if w is None:
        return "off (COVIDCT_DISPLAY_TO_HU=0)"
    anchor = "fat" if w["fat_value"] is not None else "soft tissue"
    return f"found from outside air and {anchor}: values {w['lo_hu']:.0f} .. {w['hi_hu']:.0f} HU (analyze maps them)"


@app.command()
def phantom(
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write the phantom into (created)."),
    fmt: str = typer.Option("nifti", "--format", help="nifti (phantom.nii.gz + label NIfTIs) or dicom (a DICOM series folder)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the same seed gives the same phantom)."),
    slices: int = typer.Option(48, "--slices", help="Number of axial slices."),
    size: int = typer.Option(192, "--size", help="In-plane size in pixels (square)."),
    burden: float = typer.Option(0.15, "--burden", help="Fraction of lung volume with GGO/consolidation (0 = normal lungs)."),
) -> None:
    """Write a synthetic chest CT in HU with exact lung and lesion labels (for trying covidct and for tests)."""
    from covidct.phantom import make_phantom, write_phantom

    if fmt not in ("nifti", "dicom"):
        raise typer.BadParameter("must be 'nifti' or 'dicom'", param_hint="--format")
    ph = make_phantom(shape=(slices, size, size), seed=seed, lesion_burden=burden, lesions=burden > 0)
    path = write_phantom(ph, output, fmt=fmt)
    typer.echo(f"wrote {fmt} phantom to {path}")


_registered = False


def _register_optional_commands() -> None:
    """Commands from later modules plug in here when present (once: each main() call used to add them again,
    so a process calling main() 100 times built ~900 commands per call, ~1 s)."""
    import importlib

    global _registered
    if _registered:
        return
    _registered = True
    for module in ("covidct.commands",):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)


def _stopped() -> int:
    """The one line and exit code after Ctrl-C (130) or SIGTERM (143)."""
    hint = interrupt_hint()
    what, code = ("terminated", 143) if was_terminated() else ("interrupted", 130)
    print(f"covidct: {what}" + (f"; {hint}" if hint else ""), file=sys.stderr)
    return code


# Installed by ``pip install 'covidct[train]'`` only (training, checkpoints, Grad-CAM, ONNX export).
TRAIN_EXTRA_MODULES = frozenset({"torch", "monai", "tensorboard", "onnx", "onnxscript"})


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (so tests can call ``main([...])`` in-process)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _register_optional_commands()
        # Outside standalone mode typer returns the code of a typer.Exit, and turns Ctrl-C into Exit(130).
        code = app(args=args, prog_name="covidct", standalone_mode=False)
        if code == 130:
            return _stopped()
        return code if isinstance(code, int) else 0
    except CovidCTError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        print(f"covidct: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        print("covidct: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as exc:
        print(f"covidct: error: {exc.format_message()}  (see 'covidct --help')", file=sys.stderr)
        return 64
    except OSError as exc:  # e.g. an output folder that cannot be written
        print(f"covidct: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _stopped()
    except Exception as exc:  # a bug, not a user error: still one line unless debugging
        if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in TRAIN_EXTRA_MODULES:
            print(f"covidct: error: this needs {exc.name.split('.')[0]}, which comes with the train extra: "
                  "pip install 'covidct[train]'", file=sys.stderr)
            return 8
        if os.environ.get("COVIDCT_DEBUG"):
            raise
        print(f"covidct: internal error: {exc.__class__.__name__}: {exc} (set COVIDCT_DEBUG=1 for details)", file=sys.stderr)
        return 70


def run() -> None:
    """Console entry point: :func:`main`, then exit without the interpreter's teardown.

    By the time ``main`` returns every output has been written, closed and renamed into place;
    tearing down torch, MONAI and a few GB of arrays would add 1–1.5 s to every command (measured on
    ``covidct analyze`` of a 148-slice series: 12.6 s wall with it, 11.2 s without)."""
    import logging

    stop_cleanly_on_sigterm()
    code = main()
    try:
        logging.shutdown()  # the web service's log handlers
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more can be said
        code = code or 1
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
