"""``covidct segment``: lungs / infection / lesion masks for slice images or volumes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from covidct.batch import expand_image_folders
from covidct.errors import CovidCTError

if TYPE_CHECKING:  # numpy is imported where a command runs, not for `covidct --help`
    import numpy as np

TASKS = ("lungs", "infection", "lesions")



def segment_slices(images: list[np.ndarray], is_hu: bool, task: str, model_name: str, batch_size: int = 8) -> list[np.ndarray]:
    """Label maps (each the size of its image) for 2-D slices with one model: the label rule
    (``runtime.labels_for_task``) and float32 precision of ``covidct evaluate``, so a model's evaluated Dice
    is what ``segment`` gives (with the same runtime)."""
    from covidct.models import runtime

    model, info = runtime.load(model_name)
    if info.get("spatial_dims") == 3:
        from covidct.errors import UnsupportedInput

        raise UnsupportedInput(f"model {model_name} is a 3-D model: give it a volume, not a 2-D image")
    probs = runtime.predict_slices(model, info, images, is_hu, batch_size=batch_size, bf16=False)
    labels = runtime.labels_for_task(probs, info, task, images=images, is_hu=is_hu)
    return labels


def register(app: typer.Typer) -> None:
    @app.command()
    def segment(
        inputs: list[Path] = typer.Argument(..., metavar="INPUT...", help="Slice images, folders of them, or 3-D volumes / DICOM series."),
        output: Path = typer.Option(..., "-o", "--output", help="Output folder."),
        task: str = typer.Option("lesions", "--task", help="lungs (0/1), infection (0/1) or lesions (0 none, 1 GGO, 2 consolidation, 3 effusion)."),
        model: str = typer.Option(None, "--model", help="Shipped model name, checkpoint (.pt) or run folder; default: the shipped model of the task."),
        overlay: bool = typer.Option(False, "--overlay", help="Also write <stem>_overlay.png in colour."),
        batch_size: int = typer.Option(8, "--batch-size", min=1, help="Slices per forward pass."),
        view: str = typer.Option("auto", "--view", help="auto: a slice image stored transposed (its two lungs one "
                                 "above the other) is segmented in the radiological view and its mask written back "
                                 "in the image's layout; as-is: every image as given."),
        crop_model: bool = typer.Option(True, "--crop-model/--no-crop-model", help="A slice image cut tight around "
                                        "its lungs (they fill 93 % or more of it, as in Inf-Net's and COVID-CT's crops) "
                                        "is read by the model's crop version where its card names one "
                                        "(infection-crops, lesions-crops), which learnt such crops; "
                                        "--no-crop-model: always by the model itself."),
    ) -> None:
        """Segment slices or volumes. A 2-D image gives OUTDIR/<stem>.png: one-channel 8-bit class indices with
        the input's exact width and height. A volume gives OUTDIR/<name>_<task>.nii.gz aligned to the input
        (lungs as 1 left / 2 right there). On 8-bit slice images GGO and consolidation are told apart by density
        within the lesions the model outlines (its card's density_typing). Unreadable inputs are reported and the rest
        still processed."""
        from rich.progress import track

        from covidct.io import load_ct, save_label_png, save_mask_nifti, save_overlay_png
        from covidct.labels import LESION_COLORS, LUNG_COLORS

        if task not in TASKS:
            raise typer.BadParameter(f"must be one of {', '.join(TASKS)}", param_hint="--task")
        from covidct.slice_view import TRANSPOSED_NOTE, VIEWS, crops_note, slice_layout

        if view not in VIEWS:
            raise typer.BadParameter(f"must be one of {', '.join(VIEWS)}", param_hint="--view")
        model_name = model or ("lungs" if task == "lungs" else "lesions" if task == "lesions" else "infection")
        from covidct.models import runtime, zoo

        if model is None and task == "infection" and not zoo.has_model("infection"):
            model_name = "lesions"
        _, info = runtime.load(model_name)  # fail early, once, on a bad model
        crops_name = runtime.crops_model_name(info.get("card")) if crop_model and task != "lungs" else None
        # the lung network that tells a slice image stored transposed or cut tight, loaded once for all the inputs
        lungs_net = (runtime.load("lungs") if (view == "auto" or crops_name) and zoo.has_model("lungs") else None)
        failures: list[str] = []
        last_error: CovidCTError | None = None
        files = expand_image_folders(inputs)
        colors = LUNG_COLORS if task == "lungs" else LESION_COLORS
        for path in track(files, description=f"segmenting ({task})", transient=True, disable=len(files) < 2):
            try:
                ct = load_ct(path)
                output.mkdir(parents=True, exist_ok=True)  # only once an input is readable: no empty folder
                if ct.kind == "image":
                    image = ct.array[0]
                    layout = slice_layout(image, ct.is_hu, lungs_net) if lungs_net is not None else None
                    turned = view == "auto" and layout is not None and layout.transposed
                    name = crops_name if crops_name and layout is not None and layout.cut_tight else model_name
                    label = segment_slices([image.T.copy() if turned else image], ct.is_hu, task, name,
                                           batch_size)[0]
                    if turned:
                        label = label.T.copy()
                        typer.echo(f"covidct: note: {path.name}: {TRANSPOSED_NOTE}", err=True)
                    if name != model_name:
                        typer.echo(f"covidct: note: {path.name}: {crops_note(name)}", err=True)
                    save_label_png(label, output / f"{path.stem}.png")
                    if overlay:
                        save_overlay_png(ct.array[0], label, output / f"{path.stem}_overlay.png", colors=colors)
                    continue
                from covidct.pipeline import shared_analyzer
                from covidct.pipeline.grid import crop_in_plane, lung_field_box, paste_in_plane
                from covidct.pipeline.load import display_to_hu

                if not ct.is_hu and ct.n_slices >= 3:  # a whole display-range volume: back to HU where it can be
                    ct, note = display_to_hu(ct, lung_density_needed=task != "lungs")
                    typer.echo(f"covidct: warning: {ct.name}: {note}", err=True)
                lesions_model = model_name if task != "lungs" else "lesions"
                lungs_model = model_name if task == "lungs" else "lungs"
                an = shared_analyzer(lungs_model=lungs_model, lesions_model=lesions_model)
                box = lung_field_box(ct)  # narrow lungs in a wide field of view: the networks see the lungs' box
                part = ct if box is None else crop_in_plane(ct, box)
                lungs = an.segment_lungs(part)
                if task == "lungs":
                    mask = lungs
                else:
                    mask = an.segment_lesions(part, lungs, mapped_hu=bool(ct.meta.get("display_window")))
                    if task == "infection":
                        mask = (mask > 0).astype("uint8")
                if box is not None:
                    mask = paste_in_plane(mask, ct.shape, box)
                save_mask_nifti(mask, ct, output / f"{ct.name}_{task}.nii.gz")
            except CovidCTError as exc:
                last_error = exc
                failures.append(f"{path}: {str(exc).splitlines()[0]}")
                if len(files) > 1:  # one input: main() prints its error once
                    typer.echo(f"covidct: error: {str(exc).splitlines()[0]}", err=True)
        if len(files) == 1 and last_error is not None:
            raise last_error  # one input: its own error and exit code
        typer.echo(f"{len(files) - len(failures)} of {len(files)} inputs segmented into {output}")
        if failures:
            raise CovidCTError(f"{len(failures)} input(s) could not be segmented")
