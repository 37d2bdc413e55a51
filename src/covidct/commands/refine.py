"""``covidct refine``: click-guided correction of a lesion mask (one slice per call)."""

from __future__ import annotations

from pathlib import Path

import typer


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith((".nii", ".nii.gz"))


def register(app: typer.Typer) -> None:
    @app.command()
    def refine(
        image: Path = typer.Argument(..., metavar="IMAGE", help="A slice image (PNG/JPG...) or a volume (NIfTI, DICOM) with --slice."),
        click: list[str] = typer.Option(..., "--click", metavar="X,Y,pos|neg",
                                        help="A click: X column, Y row in IMAGE's pixels; repeat for the whole history, oldest first."),
        output: Path = typer.Option(..., "-o", "--output", help="OUT.png: the refined 0/1 label PNG (IMAGE's size); "
                                    "for a volume also OUT.nii.gz (the whole mask with slice Z replaced)."),
        mask: Path = typer.Option(None, "--mask", help="The latest mask: a label PNG (IMAGE's size; non-zero = lesion), "
                                  "or for a volume a NIfTI mask on the volume's grid."),
        slice_index: int = typer.Option(None, "--slice", metavar="Z", help="Slice index of a volume (canonical order, "
                                        "inferior to superior; X, Y in covidct's radiological view of that slice)."),
        model: str = typer.Option("refine", "--model", help="Shipped model name, checkpoint (.pt) or run folder; "
                                  "a 3-D refinement model (configs/refine3d_phantom.yaml) refines the whole volume."),
    ) -> None:
        """Refine a lesion mask with positive/negative clicks; writes OUT as a label PNG like `covidct segment --task infection`."""
        import numpy as np  # here, not at the top: `covidct --help` does not need it

        from covidct.errors import UnsupportedInput
        from covidct.interactive import Click, model_spatial_dims, parse_click, refine_volume
        from covidct.interactive import refine as refine_fn
        from covidct.io import load_ct, read_label_png, save_label_png, save_mask_nifti

        clicks = [parse_click(c) for c in click]
        ct = load_ct(image)
        volume = ct.kind != "image" or ct.n_slices > 1
        if volume and slice_index is None:
            raise UnsupportedInput(f"{image} is a volume ({ct.n_slices} slices): give --slice Z")
        z = 0 if slice_index is None else int(slice_index)
        if not 0 <= z < ct.n_slices:
            raise UnsupportedInput(f"--slice {z} is outside the volume's {ct.n_slices} slices (0..{ct.n_slices - 1})")
        prior_vol = None
        prior = None
        if mask is not None:
            if _is_nifti(mask):
                if not volume:
                    raise UnsupportedInput(f"--mask {mask}: a NIfTI mask needs a volume IMAGE")
                prior_vol = (np.asarray(load_ct(mask).array) > 0).astype(np.uint8)
                if prior_vol.shape != ct.shape:
                    raise UnsupportedInput(f"--mask {mask}: shape {prior_vol.shape} differs from the volume's {ct.shape}")
                prior = prior_vol[z]
            else:
                prior = read_label_png(mask)
                if prior.shape != ct.shape[1:]:
                    raise UnsupportedInput(f"--mask {mask}: size {prior.shape[1]}x{prior.shape[0]} differs from "
                                           f"the image's {ct.shape[2]}x{ct.shape[1]}")
        if _is_nifti(output) and not volume:
            raise UnsupportedInput("a NIfTI output needs a volume IMAGE; use OUT.png for a slice")
        if volume and model_spatial_dims(model) == 3:
            # a 3-D refinement model sees the whole volume: the clicks (on slice Z) reach neighbouring slices
            if prior_vol is None and prior is not None:
                prior_vol = np.zeros(ct.shape, np.uint8)
                prior_vol[z] = prior
            clicks_z = [Click(c.x, c.y, c.positive, z) for c in clicks]
            full = refine_volume(ct.array, prior_vol, clicks_z, is_hu=ct.is_hu, model=model, spacing=ct.spacing)
            out = full[z]
        else:
            out = refine_fn(ct.array[z], prior, clicks, is_hu=ct.is_hu, model=model)
            full = np.zeros(ct.shape, np.uint8) if prior_vol is None else prior_vol
            full[z] = out
        if _is_nifti(output):
            save_mask_nifti(full, ct, output)
        else:
            save_label_png(out, output)
        typer.echo(f"{int(out.sum())} lesion pixels after {len(clicks)} click(s) -> {output}")
