"""``covidct classify``: COVID-19 classification of images (per image) and of CT volumes (per patient)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from covidct.batch import expand_image_folders
from covidct.errors import CovidCTError

if TYPE_CHECKING:  # numpy is imported where a command runs, not for `covidct --help`
    import numpy as np

BATCH = 16



def _line(path: Path, res: dict, as_json: bool) -> str:
    if as_json:
        return json.dumps({"input": str(path), "label": res["label"], "probabilities": res["probabilities"],
                           "threshold": res["threshold"], "model": res["model"]})
    probs = ", ".join(f"{k} {v:.3f}" for k, v in res["probabilities"].items())
    thr = "" if res["threshold"] is None else f", threshold {res['threshold']:.3f}"
    return f"{path}: {res['label']} ({probs}{thr}; {res['model']})"


def register(app: typer.Typer) -> None:
    @app.command()
    def classify(
        inputs: list[Path] = typer.Argument(..., metavar="INPUT...",
                                            help="Images, folders of images, or 3-D volumes (DICOM/NIfTI)."),
        model: str = typer.Option(None, "--model", help="Shipped model name, checkpoint (.pt) or run folder. "
                                  "Default: covid-vs-noncovid for images, the patient-level diagnosis for volumes."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per input and line: input, label, "
                                     "probabilities, threshold, model."),
        cam: Path = typer.Option(None, "--cam", help="Write Grad-CAM overlays <stem>_cam.png into this folder."),
    ) -> None:
        """Classify images (COVID-19 vs not, per image) and CT volumes (COVID-19 / pneumonia / normal per
        patient, from slice probabilities inside the lungs). Unreadable inputs are reported in one line each
        and the rest still processed; the exit code is then non-zero."""
        from tqdm import tqdm

        from covidct.classify import (
            DEFAULT_IMAGE_MODEL,
            classify_images,
            classify_volume,
            grad_cam,
            load_classifier,
            save_cam_overlay,
        )
        from covidct.io import load_ct

        image_model = model or DEFAULT_IMAGE_MODEL
        files = expand_image_folders(inputs)
        failures: list[str] = []
        pending: list[tuple[int, Path, np.ndarray, bool]] = []  # 2-D images waiting for a batch
        results: dict[int, str] = {}
        next_out = 0
        if cam is not None:
            cam.mkdir(parents=True, exist_ok=True)

        def fail(path: Path, exc: Exception) -> None:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            msg = msg if str(path) in msg else f"{path}: {msg}"  # io errors already name the path
            failures.append(msg)
            tqdm.write(f"covidct: error: {msg}", file=sys.stderr)

        def cam_for(path: Path, img: np.ndarray, is_hu: bool, m: str | None, stem: str) -> None:
            heat, res = grad_cam(img, is_hu, m or image_model)
            save_cam_overlay(img, heat, cam / f"{stem}_cam.png", is_hu=is_hu, title=res["label"])

        def flush() -> None:
            nonlocal next_out
            if pending:
                try:
                    res = classify_images([im for _, _, im, _ in pending], [h for *_, h in pending], image_model)
                except CovidCTError as exc:  # a bad model fails every image of the batch the same way
                    for i, p, _, _ in pending:
                        fail(p, exc)
                        results[i] = ""
                    res = []
                for (i, p, im, h), r in zip(pending, res, strict=False):
                    results[i] = _line(p, r, as_json)
                    if cam is not None:
                        try:
                            cam_for(p, im, h, model, p.stem)
                        except CovidCTError as exc:
                            fail(p, exc)
                pending.clear()
            while next_out in results:  # keep the input order on stdout
                if results[next_out]:
                    typer.echo(results[next_out])
                next_out += 1

        if model is not None:
            load_classifier(model)  # a bad --model fails once, before any input is read
        bar = tqdm(files, desc="classifying", file=sys.stderr, disable=len(files) < 2, dynamic_ncols=True)
        for i, path in enumerate(bar):
            try:
                ct = load_ct(path)
                if ct.kind == "image" or ct.is_2d:
                    pending.append((i, path, ct.array[0], bool(ct.is_hu)))
                    if len(pending) >= BATCH:
                        flush()
                    continue
                flush()
                res = classify_volume(ct, model=model)
                results[i] = _line(path, res, as_json)
                if cam is not None and res["model"].endswith("(lesion pattern)"):
                    # no network's decision to explain: the lesion masks drove it, and analyze draws them
                    tqdm.write(f"covidct: note: {path}: no Grad-CAM for the lesion-pattern diagnosis; "
                               "`covidct analyze` writes the lesion overlays", file=sys.stderr)
                elif cam is not None and res.get("slices"):
                    k = res["slices"][len(res["slices"]) // 2]
                    cam_model = model or ("three-class" if "three-class" in res["model"] else DEFAULT_IMAGE_MODEL)
                    cam_for(path, ct.array[k], bool(ct.is_hu), cam_model, f"{ct.name}_z{k:03d}")
            except CovidCTError as exc:
                fail(path, exc)
                results[i] = ""
            if not pending:
                flush()
        flush()
        if not as_json:
            typer.echo(f"{len(files) - len(failures)} of {len(files)} inputs classified", err=True)
        if failures:
            raise CovidCTError(f"{len(failures)} input(s) could not be classified")
