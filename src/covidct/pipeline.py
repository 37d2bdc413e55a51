"""``analyze``: one call from a chest CT to lung and lesion masks, severity, diagnosis and reports.

Stages (each timed in the report): load → lungs → lesions → severity → diagnosis → outputs.

- Lungs: the shipped ``lungs`` model on every slice that can contain lung (for HU input, slices
  whose HU-threshold lung field is not empty, ± a margin), through covidct's one normalisation;
  then cleaned in 3-D (components that are too small dropped, holes filled slice by slice so that
  dense lesions at the lung border stay inside) and split into left and right, also when the two
  lungs touch (erosion until two seeds separate, then a watershed).
- Lesions: the shipped ``lesions`` model (GGO / consolidation / effusion) on the lung slices. For HU
  input two physical checks follow: GGO/consolidation must lie in the (slightly dilated) lungs and
  be denser than ``lesion_min_hu``; effusion must lie in the pleural space next to a lung, at water
  density, and is kept out of the lung label (as in covidct's phantom and MedSeg's labels).
- Without shipped models (a development checkout before training), both stages fall back to HU
  rules, and the report says so in ``models`` and ``warnings``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy import ndimage

from covidct import __version__
from covidct.errors import NoLungsFound, UnsupportedInput
from covidct.labels import CONSOLIDATION, DIAGNOSIS_CLASSES, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.preprocess import IN_PLANE, bounding_box, fill_holes_in_plane, threshold_lung_mask
from covidct.report.schema import REPORT_SCHEMA_VERSION
from covidct.volume import CT


@dataclass
class Analysis:
    """What :func:`analyze` returns: the input, its masks (on the input's canonical grid) and the report."""

    ct: CT
    lungs: np.ndarray
    lesions: np.ndarray
    report: dict
    outdir: Path | None = None
    files: dict[str, str] = field(default_factory=dict)


def _model_entry(info: dict | None, fallback: str) -> dict:
    if info is None:
        return {"name": fallback, "version": "rule", "sha256": None}
    return {"name": str(info.get("name")), "version": str(info.get("version", "0")), "sha256": info.get("sha256")}


class Analyzer:
    """Holds the models (loaded once) and analyses any number of CTs: ``Analyzer()(ct)``.

    ``lungs_model`` / ``lesions_model``: a shipped model name, a checkpoint path, or None for the
    HU-rule fallback. Missing shipped models fall back with a warning.
    """

    def __init__(
        self,
        lungs_model: str | Path | None = "lungs",
        lesions_model: str | Path | None = "lesions",
        infection_model: str | Path | None = "infection",
        bf16: bool = True,
        batch_size: int = 8,
        lesion_min_hu: float = -800.0,
        min_lesion_mm3: float = 20.0,
    ) -> None:
        from covidct.models import zoo

        self.bf16 = bf16
        self.batch_size = batch_size
        self.lesion_min_hu = lesion_min_hu
        self.min_lesion_mm3 = min_lesion_mm3
        self.warnings: list[str] = []
        self.lungs = self.lesions = self.infection = None
        self.lungs_info = self.lesions_info = self.infection_info = None
        for attr, name in (("lungs", lungs_model), ("lesions", lesions_model), ("infection", infection_model)):
            if name is None:
                continue
            if not zoo.has_model(name) and str(name) in ("lungs", "lesions", "infection"):
                if attr != "infection":  # the infection model only sharpens the lesion extent: optional
                    self.warnings.append(f"shipped model '{name}' not found: using the HU-rule fallback for {attr}")
                continue
            model, info = zoo.load(name)
            if info.get("spatial_dims") != 3:
                from covidct.models.inference import optimise_for_cpu

                model = optimise_for_cpu(model)
            setattr(self, attr, model)
            setattr(self, f"{attr}_info", info)

    # --- lungs ---------------------------------------------------------------------------------

    def _predict(self, model, info, vol: np.ndarray, zs: np.ndarray, is_hu: bool, spacing=None, role: str = "lungs",
                 cache: dict | None = None) -> np.ndarray:
        """(N, C, H, W) probabilities of slices ``vol[zs]``; a 3-D model sees them as one volume (sliding window).

        ``cache`` (one per CT) keeps each slice's normalised model input, so models sharing the
        normalisation settings do not repeat it (CLAHE on every slice is a sizeable part of a pass)."""
        if info.get("spatial_dims") == 3:
            from covidct.models.volume_inference import predict_volume, probs_for_role

            prob = predict_volume(model, info, vol[zs], spacing, is_hu=is_hu, bf16=self.bf16)
            return probs_for_role(prob, info.get("classes", []), role)
        import json

        import torch

        from covidct.models.inference import predict_slices, prepare_slices

        key = (json.dumps(info.get("normalisation"), sort_keys=True), tuple(info.get("input_size") or (256, 256)), is_hu)
        rows = (cache if cache is not None else {}).setdefault(key, {})
        missing = [int(z) for z in zs if int(z) not in rows]
        if missing:
            rows.update(zip(missing, prepare_slices([vol[z] for z in missing], [is_hu] * len(missing), info), strict=True))
        prepared = torch.stack([rows[int(z)] for z in zs])
        return predict_slices(model, info, vol[zs], is_hu, batch_size=self.batch_size, bf16=self.bf16, prepared=prepared)

    def segment_lungs(self, ct: CT, cache: dict | None = None) -> np.ndarray:
        """(z, y, x) uint8: 0 background, 1 left lung, 2 right lung. ``cache``: see :meth:`_predict`."""
        vol = ct.array
        if ct.is_hu:
            field_mask = threshold_lung_mask(vol)
            counts = field_mask.reshape(len(vol), -1).sum(1)
            candidates = np.flatnonzero(counts > 0.002 * vol[0].size)
            if candidates.size == 0:
                return np.zeros(vol.shape, np.uint8)
            lo, hi = max(candidates.min() - 2, 0), min(candidates.max() + 2, len(vol) - 1)
            idx = np.arange(lo, hi + 1)
        else:
            field_mask = None
            idx = np.arange(len(vol))
        mask = np.zeros(vol.shape, bool)
        if self.lungs is not None:
            prob = self._predict(self.lungs, self.lungs_info, vol, idx, ct.is_hu, ct.spacing, "lungs", cache)
            thr = (self.lungs_info.get("thresholds") or {}).get("foreground", 0.5)
            mask[idx] = prob[:, 1] >= thr
            if ct.is_hu:  # lungs are air-filled: nothing denser than soft tissue at the lung edge
                mask &= vol < 200
        elif field_mask is not None:
            mask = field_mask
        else:  # display intensities and no model: the papers' k-means lung field, slice by slice
            from covidct.preprocess import kmeans_lung_mask

            mask = np.stack([kmeans_lung_mask(s, erosion=1, dilation=1) for s in vol])
        if ct.is_hu:
            mask = remove_air_pockets(mask, vol, ct.spacing)
        mask = clean_lung_mask(mask, ct.spacing)
        return split_left_right(mask, ct.spacing)

    # --- lesions -------------------------------------------------------------------------------

    def segment_lesions(self, ct: CT, lungs: np.ndarray, cache: dict | None = None) -> np.ndarray:
        """(z, y, x) uint8: 0 none, 1 GGO, 2 consolidation, 3 pleural effusion. ``cache``: see :meth:`_predict`."""
        vol = ct.array
        lung = lungs > 0
        out = np.zeros(vol.shape, np.uint8)
        zs = np.flatnonzero(lung.reshape(len(vol), -1).any(1))
        if zs.size == 0:
            return out
        dz, dy, dx = ct.spacing
        near_lung = _dilate_mm(lung, (dz, dy, dx), 3.0)
        binary = False
        prob = p_inf = None
        if self.lesions is not None:
            if self.lesions_info.get("spatial_dims") == 3:  # one contiguous block of slices for a volume model
                zs = np.arange(zs.min(), zs.max() + 1)
            prob = self._predict(self.lesions, self.lesions_info, vol, zs, ct.is_hu, ct.spacing, "lesions", cache)
            binary = prob.shape[1] == 2
        if self.infection is not None and self.infection_info.get("spatial_dims") != 3:
            p_inf = self._predict(self.infection, self.infection_info, vol, zs, ct.is_hu, ct.spacing, "infection",
                                  cache)[:, 1]
        if p_inf is not None:
            # extent from the binary infection model (trained on the most labelled slices); type from the
            # lesion model (its most likely lesion class) or, without one, from density below
            thr = (self.infection_info.get("thresholds") or {}).get("foreground", 0.5)
            infected = p_inf >= thr
            if prob is not None and not binary:
                labels = _first_argmax([prob[:, c] for c in range(prob.shape[1])])
                typed = _first_argmax([prob[:, c] for c in range(1, prob.shape[1])]) + np.uint8(1)
                out[zs] = np.where(infected, typed, np.where(labels == EFFUSION, EFFUSION, 0))
            else:
                out[zs] = infected.astype(np.uint8)
                binary = True
        elif prob is not None:
            out[zs] = _first_argmax([prob[:, c] for c in range(prob.shape[1])])
        elif ct.is_hu:
            sub = vol[zs]
            rule = np.zeros(sub.shape, np.uint8)
            rule[(sub > -700) & (sub < -300)] = GGO
            # dense and filled-in: vessels are thin, so an opening keeps consolidation only
            dense = ndimage.binary_opening((sub >= -300) & (sub < 100), structure=np.ones((1, 5, 5), bool))
            rule[dense] = CONSOLIDATION
            out[zs] = rule
        if binary:  # infected / not only: GGO below -300 HU, consolidation above (HU input)
            infected = out > 0
            out[:] = 0
            if ct.is_hu:
                out[infected & (vol < -300)] = GGO
                out[infected & (vol >= -300)] = CONSOLIDATION
            else:
                out[infected] = GGO
        infection = (out == GGO) | (out == CONSOLIDATION)
        infection &= near_lung
        if ct.is_hu:
            infection &= vol >= self.lesion_min_hu
        effusion = out == EFFUSION
        if ct.is_hu:
            pleural = _dilate_mm(lung, (dz, dy, dx), 30.0) & ~lung
            effusion &= pleural & (vol > -50) & (vol < 80)
        else:
            effusion &= ~lung
        if effusion.any() and ct.n_slices > 1:
            effusion = _plausible_effusion(effusion, lung, ct.spacing)
        result = np.zeros_like(out)
        result[infection] = out[infection]
        result[effusion] = EFFUSION
        return _drop_small(result, ct.spacing, self.min_lesion_mm3)

    # --- the whole analysis --------------------------------------------------------------------

    def __call__(
        self, ct: CT, outdir: str | Path | None = None, *, png: bool = False, html: bool = True,
        progress: Callable[[str], None] | None = None, seg_writer: SegWriter | None = None,
    ) -> Analysis:
        """Analyse ``ct``; ``progress`` (optional) is called with each stage's name as it starts.

        ``seg_writer`` (optional) starts writing the DICOM SEG: called with (lungs, lesions, path)
        it returns a future; the default writes it in a thread from this ``ct``. Either way it starts
        as soon as the masks are final, so the SEG (the slowest output) overlaps the severity, the
        report and the other outputs.
        """
        stage = progress or (lambda _name: None)
        t = {"load": float(ct.meta.get("_load_seconds", 0.0))}
        if ct.n_slices == 1 and not ct.is_hu and ct.kind == "image":
            mode = "slice"
        elif ct.n_slices < 3:
            raise UnsupportedInput(f"{ct.n_slices} slice(s) is too few for a volume analysis; give a series or a single image")
        else:
            mode = "volume"
        warnings = list(ct.warnings) + list(self.warnings)
        if mode == "volume" and not ct.is_hu:
            warnings.append("input intensities are not HU (display-range volume): HU checks skipped, volumes less reliable")
        stage("lungs")
        t0 = time.perf_counter()
        # work at the models' resolution (about 256² in-plane): 4x fewer voxels for a 512² series
        work, factor = working_grid(ct)
        cache: dict = {}  # normalised slices, shared by the models
        lungs = self.segment_lungs(work, cache)
        t["lungs"] = time.perf_counter() - t0
        if not lungs.any():
            raise NoLungsFound(f"no lungs found in {ct.path or 'the input'}: is this a chest CT?")
        stage("lesions")
        t0 = time.perf_counter()
        lesions = self.segment_lesions(work, lungs, cache)
        del cache
        # GGO/consolidation are part of the lung they lie in (the lung label includes its lesions)
        lungs = _absorb_lesions(lungs, lesions)
        if factor > 1:
            lungs, lesions = upsample_labels(lungs, ct.shape), upsample_labels(lesions, ct.shape)
            infection = (lesions == GGO) | (lesions == CONSOLIDATION)
            lesions[infection & (lungs == 0)] = 0  # interpolated edges must agree
            lungs[lesions == EFFUSION] = 0
        t["lesions"] = time.perf_counter() - t0
        if outdir is None:
            return self._finish(ct, mode, lungs, lesions, t, warnings, stage)
        early = _EarlyOutputs.start(Path(outdir), ct, lungs, lesions, mode, seg_writer)
        try:
            analysis = self._finish(ct, mode, lungs, lesions, t, warnings, stage)
            stage("outputs")
            write_outputs(analysis, Path(outdir), png=png, html=html, timings=t, early=early)
        finally:
            early.discard()
        return analysis

    def _finish(self, ct: CT, mode: str, lungs: np.ndarray, lesions: np.ndarray, t: dict, warnings: list[str],
                stage: Callable[[str], None]) -> Analysis:
        """Severity, diagnosis and the report of the final masks."""
        stage("severity")
        t0 = time.perf_counter()
        severity = measure(ct, lungs, lesions, mode)
        t["severity"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        diagnosis = diagnose_from_findings(severity)
        t["diagnosis"] = time.perf_counter() - t0
        if mode == "volume" and self.infection is not None:
            warnings.extend(low_involvement_warnings(severity))
        report = build_report(ct, mode, severity, diagnosis, [
            _model_entry(self.lungs_info, "hu-threshold-lungs"),
            _model_entry(self.lesions_info, "hu-rule-lesions"),
        ] + ([_model_entry(self.infection_info, "")] if self.infection_info else []), t, warnings)
        return Analysis(ct=ct, lungs=lungs, lesions=lesions, report=report)


# --- working grid -------------------------------------------------------------------------------

WORKING_SIZE = 256


def working_grid(ct: CT, target: int = WORKING_SIZE) -> tuple[CT, int]:
    """The CT block-averaged in-plane by an integer factor so that its smaller side is about ``target``."""
    h, w = ct.shape[1:]
    f = max(1, int(round(min(h, w) / target)))
    if f == 1:
        return ct, 1
    if f == 2 and h % 2 == 0 and w % 2 == 0 and ct.array.dtype == np.float32:
        # The common 512² case without skimage's strided np.mean (several times slower): the same float32
        # sums in the same order, each row's pair then the two rows (tests/test_pipeline_exact.py checks it).
        a = ct.array.reshape(len(ct.array), h // 2, 2, w // 2, 2)
        arr = ((a[:, :, 0, :, 0] + a[:, :, 0, :, 1]) + (a[:, :, 1, :, 0] + a[:, :, 1, :, 1])) / np.float32(4)
    else:
        from skimage.transform import downscale_local_mean

        arr = downscale_local_mean(ct.array, (1, f, f), cval=float(np.median(ct.array[:, 0, :]))).astype(np.float32)
    dz, dy, dx = ct.spacing
    work = CT(array=arr, spacing=(dz, dy * f, dx * f), affine=ct.affine, is_hu=ct.is_hu, kind=ct.kind,
              path=ct.path, spacing_known=ct.spacing_known)  # fmt: skip
    return work, f


def upsample_labels(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Label map to a finer in-plane grid with smooth edges (bilinear per class, then argmax)."""
    import cv2

    present = [int(c) for c in np.unique(labels)]
    out = np.zeros(shape, np.uint8)
    if len(present) == 1:
        out[:] = present[0]
        return out
    h0, w0 = labels.shape[1:]
    # block-averaged grids may have cut a remainder: resize to the covered part, pad the rest
    f = int(round(shape[1] / h0)) if shape[1] >= h0 else 1
    hh, ww = min(h0 * f, shape[1]), min(w0 * f, shape[2])
    values = np.asarray(present, np.uint8)
    # An exact 2x upsampling is done on each slice's labelled box grown by 2 pixels only: outside it every
    # output pixel interpolates background, and inside the weights (1/4, 3/4) and 0/1 maps make every
    # product and sum exact, so the block gives the same maps as the whole slice.
    crop = f == 2 and (hh, ww) == (2 * h0, 2 * w0)
    for k in np.flatnonzero((labels > 0).reshape(len(labels), -1).any(1)):
        ys, xs = bounding_box(labels[k] > 0, margin=2) if crop else (slice(0, h0), slice(0, w0))
        sub = labels[k, ys, xs]
        size = (sub.shape[1] * 2, sub.shape[0] * 2) if crop else (ww, hh)
        maps = [cv2.resize((sub == c).astype(np.float32), size, interpolation=cv2.INTER_LINEAR) for c in present]
        out[k, 2 * ys.start : 2 * ys.start + size[1], 2 * xs.start : 2 * xs.start + size[0]] = values[_first_argmax(maps)]
    return out


def _first_argmax(arrays: list[np.ndarray]) -> np.ndarray:
    """uint8 index of the largest of equally shaped arrays, the first one on ties: ``np.argmax`` of their
    stack along a new axis 0, without the stack and several times faster than numpy's strided reduction."""
    best = np.array(arrays[0], copy=True)
    idx = np.zeros(best.shape, np.uint8)
    for i, a in enumerate(arrays[1:], start=1):
        better = a > best  # strictly greater: an earlier index keeps a tie, as in np.argmax
        idx[better] = i
        np.maximum(best, a, out=best)
    return idx


# --- mask post-processing ------------------------------------------------------------------------


def _ball(radius_vox: tuple[int, ...]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius_vox)]
    return sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radius_vox, strict=True)) <= 1.0


def _radius_vox(shape: tuple[int, ...], spacing: tuple[float, float, float], mm: float) -> tuple[int, int, int]:
    """``mm`` in whole voxels along each axis (none across the slices of a single slice)."""
    r = tuple(max(int(round(mm / s)), 0) for s in spacing)
    return (0, *r[1:]) if shape[0] == 1 else r


def _grow_box(box: tuple[slice, ...], grow: Sequence[int], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by ``grow[axis]`` voxels on each side, clipped to ``shape``."""
    return tuple(slice(max(b.start - g, 0), min(b.stop + g, n)) for b, g, n in zip(box, grow, shape, strict=True))


def _dilate_mm(mask: np.ndarray, spacing: tuple[float, float, float], mm: float) -> np.ndarray:
    """Dilate by about ``mm`` millimetres (anisotropic voxels respected)."""
    r = _radius_vox(mask.shape, spacing, mm)
    if not any(r):
        return mask.copy()
    # Only the mask's bounding box grown by r can change, so filter just that block (the lungs fill a
    # fraction of the volume). Exact: the block's edges are either the volume's own edges or at least r
    # voxels of background away from the mask, where the filter's reflected border sees background too.
    box = bounding_box(mask)
    if box is None:
        return np.zeros(mask.shape, bool)
    box = _grow_box(box, r, mask.shape)
    # a box of rank-1 passes is cheaper than a ball and close enough for a margin
    block = mask[box].astype(np.uint8)
    for axis, ri in enumerate(r):
        if ri:
            size = [1, 1, 1]
            size[axis] = 2 * ri + 1
            block = ndimage.maximum_filter(block, size=tuple(size))
    out = np.zeros(mask.shape, bool)
    out[box] = block
    return out


def _plausible_effusion(effusion: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float],
                        min_ml: float = 5.0) -> np.ndarray:
    """Keep effusion components that look like one: fluid lying against the lung surface, dependent
    (in the posterior half of the lungs, supine patient) and at least ``min_ml`` in volume. Patches of
    chest-wall or paraspinal muscle, which have the same density, fail one of these."""
    lbl, n = ndimage.label(effusion)
    if n == 0:
        return effusion
    shell = _dilate_mm(lung, spacing, 2.0 * max(spacing[1], spacing[2])) & ~lung
    vox_ml = float(np.prod(spacing)) / 1000.0
    # Per-component sums over the effusion voxels only, added in raster order as ndimage.sum_labels and
    # center_of_mass add them (so the same floats), without their passes over the whole volume.
    where = np.nonzero(lbl)
    comp = lbl[where]
    count = np.bincount(comp, minlength=n + 1)[1:]
    size_ml = count * vox_ml
    touch = np.bincount(comp, weights=shell[where], minlength=n + 1)[1:]
    cy = np.bincount(comp, weights=where[1].astype(float), minlength=n + 1)[1:] / count
    rows = lung.sum(axis=(0, 2))  # lung voxels per row; rows run anterior -> posterior
    lung_mid_y = (rows * np.arange(len(rows))).sum() / rows.sum() if rows.any() else 0.0
    keep = np.zeros(n + 1, bool)
    keep[1:] = (size_ml >= min_ml) & (touch > 0) & (cy >= lung_mid_y)
    return keep[lbl]


def _drop_small(labels: np.ndarray, spacing: tuple[float, float, float], min_mm3: float) -> np.ndarray:
    vox = float(np.prod(spacing))
    min_vox = max(int(np.ceil(min_mm3 / vox)), 1)
    if min_vox <= 1:
        return labels
    fg = labels > 0
    lbl, n = ndimage.label(fg)
    if n == 0:
        return labels
    sizes = np.bincount(lbl.ravel())
    small = sizes < min_vox
    small[0] = False
    out = labels.copy()
    out[small[lbl]] = 0
    return out


AIR_HU = -920.0  # pure air after partial-volume averaging on the working grid


def remove_air_pockets(mask: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], min_mm: float = 6.0) -> np.ndarray:
    """Drop what a lung model may mistake for lung: airways, gut gas, small airless blobs.

    Lung parenchyma is about -850 HU with vessels running through it; the trachea, main bronchi and
    gas in the stomach or bowel are homogeneous air (below about -920 HU even after block averaging). Air regions that survive an
    in-plane opening of about ``min_mm`` are removed with a ~3 mm rim (their partial-volume walls).
    Small in-plane pieces (< 10 cm²) that are mostly airless (under 25 % of voxels below -600 HU)
    are soft tissue next to the lung (e.g. around the trachea) and are dropped too; large airless
    pieces are kept, since a consolidated lobe is airless and still lung. Bullae enclosed by lung
    come back with the hole filling of :func:`clean_lung_mask`.
    """
    r = max(1, int(round(min_mm / 2 / min(spacing[1], spacing[2]))))
    rim = max(1, int(round(3.0 / min(spacing[1], spacing[2]))))
    # Everything below stays within the mask's bounding box grown by the 10 mm of the air search plus the
    # in-plane reach of the opening and the rim: work on that block (exact, as in _dilate_mm).
    box = bounding_box(mask)
    if box is None:
        return np.zeros(mask.shape, bool)
    grow = np.add(_radius_vox(mask.shape, spacing, 10.0), (0, max(r, rim, 1), max(r, rim, 1)))
    box = _grow_box(box, grow, mask.shape)
    result = np.zeros(mask.shape, bool)
    result[box] = _remove_air_pockets(mask[box], hu[box], spacing, r, rim)
    return result


def _remove_air_pockets(mask: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], r: int, rim: int) -> np.ndarray:
    out = mask.copy()
    # all air of the slice: a lumen the model left out still has a wall the model may have kept
    air = (hu < AIR_HU) & _dilate_mm(mask, spacing, 10.0)
    if air.any():
        yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
        disk = (yy**2 + xx**2 <= r * r)[None]
        solid_air = ndimage.binary_opening(air, structure=disk)
        if solid_air.any():
            out &= ~ndimage.binary_dilation(solid_air, structure=np.ones((1, 3, 3), bool), iterations=rim)
    px_cm2 = spacing[1] * spacing[2] / 100.0
    lbl, n = ndimage.label(out, structure=IN_PLANE)  # each slice's pieces, numbered across the volume
    if n:
        count = np.bincount(lbl.ravel())
        frac = np.bincount(lbl.ravel(), weights=(hu < -600).ravel()) / np.maximum(count, 1)
        bad = (count * px_cm2 < 10.0) & (frac < 0.25)
        bad[0] = False
        out[bad[lbl]] = False
    return ndimage.binary_opening(out, structure=np.ones((1, 3, 3), bool))


def clean_lung_mask(mask: np.ndarray, spacing: tuple[float, float, float], min_fraction: float = 0.05) -> np.ndarray:
    """Keep the large 3-D components (the lungs), fill holes slice by slice (keeps dense border lesions)."""
    box = bounding_box(mask, margin=1)
    if box is None:
        return mask
    lbl, _ = ndimage.label(mask[box])
    sizes = np.bincount(lbl.ravel())
    sizes[0] = 0
    keep = sizes >= max(sizes.max() * min_fraction, 1)
    sub = fill_holes_in_plane(keep[lbl])
    out = np.zeros_like(mask)
    out[box] = sub
    return out


def split_left_right(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Label a lung mask 1 (patient's left = larger x) / 2 (right), also when the lungs touch."""
    out = np.zeros(mask.shape, np.uint8)
    box = bounding_box(mask, margin=1)
    if box is None:
        return out
    out[box] = _split_left_right(mask[box], spacing)
    return out


def _split_left_right(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    out = np.zeros(mask.shape, np.uint8)
    seeds = _two_seeds(mask)
    if seeds is None:  # one blob that erosion could not split: cut at the midline of each slice
        xs = np.nonzero(mask)[2]
        mid = 0.5 * (xs.min() + xs.max())
        xx = np.arange(mask.shape[2])[None, None, :]
        out[mask & (xx >= mid)] = LEFT_LUNG
        out[mask & (xx < mid)] = RIGHT_LUNG
        return out
    from skimage.segmentation import watershed

    markers = np.zeros(mask.shape, np.int32)
    a, b = seeds
    ax = np.nonzero(a)[2].mean()
    bx = np.nonzero(b)[2].mean()
    left, right = (a, b) if ax > bx else (b, a)
    markers[left] = LEFT_LUNG
    markers[right] = RIGHT_LUNG
    dist = ndimage.distance_transform_edt(mask, sampling=spacing)
    lab = watershed(-dist, markers, mask=mask)
    return lab.astype(np.uint8)


def _two_seeds(mask: np.ndarray, max_iter: int = 12) -> tuple[np.ndarray, np.ndarray] | None:
    """Two big components of the mask, eroding (in-plane) until the lungs separate."""
    structure = IN_PLANE  # erode within each slice only
    cur = mask
    for _ in range(max_iter + 1):
        lbl, n = ndimage.label(cur)
        if n >= 2:
            sizes = np.bincount(lbl.ravel())
            sizes[0] = 0
            order = np.argsort(sizes)[::-1]
            if sizes[order[1]] >= 0.15 * sizes[order[0]]:
                a, b = lbl == order[0], lbl == order[1]
                ax, bx = np.nonzero(a)[2].mean(), np.nonzero(b)[2].mean()
                spread = np.ptp(np.nonzero(mask)[2]) + 1
                if abs(ax - bx) > 0.15 * spread:
                    return a, b
        cur = ndimage.binary_erosion(cur, structure=structure)
        if not cur.any():
            return None
    return None


def _absorb_lesions(lungs: np.ndarray, lesions: np.ndarray) -> np.ndarray:
    """Add GGO/consolidation voxels outside the lung label to the nearest lung."""
    infection = (lesions == GGO) | (lesions == CONSOLIDATION)
    missing = infection & (lungs == 0)
    if not missing.any() or not lungs.any():
        return lungs
    box = bounding_box((lungs > 0) | missing, margin=1)
    sub = lungs[box]
    # the feature transform alone (no distances), and the nearest lung label looked up only where needed
    idx = ndimage.distance_transform_edt(sub == 0, return_distances=False, return_indices=True)
    m = missing[box]
    out = lungs.copy()
    out[box][m] = sub[tuple(i[m] for i in idx)]
    return out


# --- severity ----------------------------------------------------------------------------------

PAN_BINS = (0.0, 5.0, 25.0, 50.0, 75.0)  # upper bounds (%) of scores 0/1..4, >75 % -> 5
ZERO_INVOLVEMENT_PCT = 0.05  # below this a zone counts as uninvolved (noise-level false positives)


def pan_lobe_score(percent: float) -> int:
    """Pan et al. 0–5: none, <5 %, 5–25 %, 26–49 %, 50–75 %, >75 %."""
    if percent < ZERO_INVOLVEMENT_PCT:
        return 0
    if percent < 5:
        return 1
    if percent <= 25:
        return 2
    if percent < 50:
        return 3
    if percent <= 75:
        return 4
    return 5


def measure(ct: CT, lungs: np.ndarray, lesions: np.ndarray, mode: str = "volume") -> dict:
    """Volumes (voxel counts), involvement per lung and zone, and the Pan score (six-zone approximation).

    One pass of per-slice label-pair counts inside the masks' bounding box does all the counting.
    """
    res: dict = {"mode": mode, "per_lung": {}, "zones": {}, "voxel_ml": ct.voxel_volume_ml if mode == "volume" else None}
    box = bounding_box((lungs > 0) | (lesions > 0))
    n_pairs = 12  # code = lung label * 4 + lesion label
    if box is None:
        counts = np.zeros((1, n_pairs), np.int64)
    else:
        code = lungs[box].astype(np.uint8) * 4 + lesions[box]
        counts = np.stack([np.bincount(c.ravel(), minlength=n_pairs) for c in code])
    total = counts.sum(0)
    for side, lab in (("left", LEFT_LUNG), ("right", RIGHT_LUNG)):
        lung_per_slice = counts[:, lab * 4 : lab * 4 + 4].sum(1)
        inf_per_slice = counts[:, lab * 4 + GGO] + counts[:, lab * 4 + CONSOLIDATION]
        res["per_lung"][side] = {
            "lung_vox": int(lung_per_slice.sum()),
            "ggo": int(total[lab * 4 + GGO]),
            "consolidation": int(total[lab * 4 + CONSOLIDATION]),
            "infection": int(inf_per_slice.sum()),
            "effusion": 0,
        }
        for zone in ("upper", "middle", "lower"):
            res["zones"][f"{side}_{zone}"] = None
        zs = np.flatnonzero(lung_per_slice)
        if zs.size and mode == "volume":
            # thirds of the lung's cranio-caudal extent; z increases towards the head
            edges = np.floor(np.linspace(zs.min(), zs.max() + 1, 4)).astype(int)
            for zone, a, b in zip(("lower", "middle", "upper"), edges[:-1], edges[1:], strict=True):
                nz = int(lung_per_slice[a:b].sum())
                res["zones"][f"{side}_{zone}"] = 100.0 * int(inf_per_slice[a:b].sum()) / nz if nz else 0.0
    eff_vox = int(total[EFFUSION :: 4].sum())
    if eff_vox:
        # effusion belongs to the side of the lung it lies against: split at the midline between the lungs
        # voxels per column (x) instead of coordinate lists; integer sums, so the same means
        xs = np.arange(box[2].stop - box[2].start)
        n_left, n_right, n_eff = ((m[box] == lab).sum(axis=(0, 1)) for m, lab in
                                  ((lungs, LEFT_LUNG), (lungs, RIGHT_LUNG), (lesions, EFFUSION)))
        if n_left.any() and n_right.any():
            mid = 0.5 * ((n_left * xs).sum() / n_left.sum() + (n_right * xs).sum() / n_right.sum())
            res["per_lung"]["left"]["effusion"] = int(n_eff[xs >= mid].sum())
            res["per_lung"]["right"]["effusion"] = int(n_eff[xs < mid].sum())
        else:
            side = "left" if n_left.any() else "right"
            res["per_lung"][side]["effusion"] = eff_vox

    def pct(a: int, b: int) -> float:
        return 100.0 * a / b if b else 0.0

    pl = res["per_lung"]
    res["involvement"] = {
        "left": pct(pl["left"]["infection"], pl["left"]["lung_vox"]),
        "right": pct(pl["right"]["infection"], pl["right"]["lung_vox"]),
        "total": pct(pl["left"]["infection"] + pl["right"]["infection"], pl["left"]["lung_vox"] + pl["right"]["lung_vox"]),
    }
    # bilateral / peripheral / GGO-predominance features for the diagnosis
    tot_inf = pl["left"]["infection"] + pl["right"]["infection"]
    res["ggo_fraction"] = (pl["left"]["ggo"] + pl["right"]["ggo"]) / tot_inf if tot_inf else 0.0
    res["bilateral"] = res["involvement"]["left"] >= 0.5 and res["involvement"]["right"] >= 0.5
    res["peripheral_fraction"] = 0.0
    if tot_inf and mode == "volume":
        # distance to the lung surface on a 2x in-plane subsampled grid (a pattern feature, not a volume)
        lb = lungs[box][:, ::2, ::2] > 0
        ib = np.isin(lesions[box][:, ::2, ::2], (GGO, CONSOLIDATION)) & lb
        if ib.any():
            dz, dy, dx = ct.spacing
            depth = ndimage.distance_transform_edt(lb, sampling=(dz, 2 * dy, 2 * dx))
            res["peripheral_fraction"] = float((depth[ib] <= 20.0).mean())
    if mode == "volume":
        z = res["zones"]
        lobes = {
            "RUL": z["right_upper"], "RML": z["right_middle"], "RLL": z["right_lower"],
            # the left lung has two lobes: its upper and middle thirds approximate the upper lobe
            "LUL": None if z["left_upper"] is None else 0.5 * (z["left_upper"] + z["left_middle"]),
            "LLL": z["left_lower"],
        }  # fmt: skip
        res["lobes_percent"] = lobes
        res["lobe_scores"] = {k: pan_lobe_score(v or 0.0) for k, v in lobes.items()}
        res["score"] = int(sum(res["lobe_scores"].values()))
    else:
        res["lobes_percent"] = res["lobe_scores"] = None
        res["score"] = None
    return res


# --- diagnosis ---------------------------------------------------------------------------------


# The highest false involvement the shipped models gave on the benchmark's lesion-free phantoms (3.71 %,
# docs/BENCHMARKS.md; P001's infection-free slices: 3.41 %), rounded up: below it, findings cannot be told
# from the models' false positives.
FALSE_INVOLVEMENT_PCT = 4.0


def low_involvement_warnings(sev: dict) -> list[str]:
    """A warning when the total involvement is within the models' measured false-positive level."""
    total = float(sev["involvement"]["total"])
    if total >= FALSE_INVOLVEMENT_PCT:
        return []
    return [
        f"total involvement {total:.1f} % is below {FALSE_INVOLVEMENT_PCT:g} %, about what the lesion models mark in "
        "lesion-free lungs (vessels, lung bases; measured on phantoms and on a real series' infection-free slices): "
        "at this level the lesion figures, severity score and diagnosis cannot be told from false positives"
    ]


def diagnose_from_findings(sev: dict) -> dict:
    """COVID-19 / other pneumonia / normal from the lesion findings (an interpretable rule, not fitted to data).

    P(abnormal) rises with total involvement: a logistic curve in log10(involvement) centred at
    ``FALSE_INVOLVEMENT_PCT``, the involvement the models mark in lesion-free lungs (measured on
    phantoms, and matched by a real series' infection-free slices), so that their false positives
    alone are not taken as disease (a centre at 1 % called every normal phantom COVID-19);
    within abnormal, the COVID-19 share rises with the typical CT pattern of the RSNA consensus:
    bilateral, peripheral, ground-glass-predominant opacities.
    """
    inv = max(float(sev["involvement"]["total"]), 1e-4)
    p_abn = 1.0 / (1.0 + np.exp(-3.0 * (np.log10(inv) - np.log10(FALSE_INVOLVEMENT_PCT))))
    typical = 0.25 + 0.25 * float(sev["bilateral"]) + 0.25 * float(sev["ggo_fraction"]) + 0.2 * float(sev["peripheral_fraction"] >= 0.5)
    typical = min(max(typical, 0.05), 0.95)
    probs = {"covid19": p_abn * typical, "pneumonia": p_abn * (1 - typical), "normal": 1.0 - p_abn}
    label = max(probs, key=probs.get)
    return {
        "label": label,
        "probabilities": {k: round(float(probs[k]), 4) for k in DIAGNOSIS_CLASSES},
        "method": (
            f"rule on lesion findings (not fitted to data): P(abnormal) from total involvement (logistic, 50 % at "
            f"{FALSE_INVOLVEMENT_PCT:g} %, the models' false-positive level in lesion-free lungs); "
            "COVID-19 share from bilateral, GGO-predominant, peripheral pattern (RSNA typical appearance)"
        ),
    }


# --- report -------------------------------------------------------------------------------------


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(float(x), nd)


def build_report(ct: CT, mode: str, sev: dict, diagnosis: dict, models: list[dict], timings: dict, warnings: list[str]) -> dict:
    vml = sev["voxel_ml"]
    pl = sev["per_lung"]

    def ml(n: int) -> float | None:
        return None if vml is None else round(n * vml, 2)

    lesion_side = {
        side: {
            "ggo_ml": ml(pl[side]["ggo"]),
            "consolidation_ml": ml(pl[side]["consolidation"]),
            "effusion_ml": ml(pl[side]["effusion"]),
            "total_ml": ml(pl[side]["infection"] + pl[side]["effusion"]),
        }
        for side in ("left", "right")
    }
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "covidct_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "input": {
            "path": ct.path,
            "kind": ct.kind,
            "n_slices": ct.n_slices,
            "shape_zyx": list(ct.shape),
            "spacing_mm": [round(float(s), 4) for s in ct.spacing] if ct.spacing_known else None,
            "is_hu": bool(ct.is_hu),
            "series_uid": ct.meta.get("series_uid"),
            "patient_id": ct.meta.get("patient_id"),
        },
        "diagnosis": diagnosis,
        "lungs": {
            "left_ml": ml(pl["left"]["lung_vox"]),
            "right_ml": ml(pl["right"]["lung_vox"]),
            "total_ml": ml(pl["left"]["lung_vox"] + pl["right"]["lung_vox"]),
        },
        "lesions": {
            k: (None if vml is None else round(lesion_side["left"][k] + lesion_side["right"][k], 2))
            for k in ("ggo_ml", "consolidation_ml", "effusion_ml", "total_ml")
        }
        | lesion_side,
        "involvement_percent": {
            "left": _r(sev["involvement"]["left"], 3),
            "right": _r(sev["involvement"]["right"], 3),
            "total": _r(sev["involvement"]["total"], 3),
            "zones": {k: _r(v, 3) for k, v in sev["zones"].items()},
        },
        "severity": {
            "score": sev["score"],
            "max": 25,
            "method": (
                "Pan et al. 2020 CT severity score (5 lobes × 0–5) approximated from six zones: the right lung's "
                "upper/middle/lower thirds stand for RUL/RML/RLL, the left lung's upper two thirds for LUL and its "
                "lower third for LLL (no lobe segmentation yet)"
                if mode == "volume"
                else "not computed for a single slice (needs the whole lungs)"
            ),
            "lobes": sev["lobe_scores"],
            "lobes_percent": None if sev["lobes_percent"] is None else {k: _r(v, 3) for k, v in sev["lobes_percent"].items()},
        },
        "pattern": {
            "bilateral": bool(sev["bilateral"]),
            "ggo_fraction": _r(sev["ggo_fraction"], 3),
            "peripheral_fraction": _r(sev["peripheral_fraction"], 3),
        },
        "slices": [],
        "models": models,
        "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
        "warnings": warnings,
        "outputs": {},
    }
    return report


# --- outputs ------------------------------------------------------------------------------------


SegWriter = Callable[[np.ndarray, np.ndarray, Path], "Future[Path]"]


@dataclass
class _EarlyOutputs:
    """The temp output folder and the DICOM SEG, started before the severity and report are computed."""

    tmp: Path
    seg: Future | None = None
    owner: ThreadPoolExecutor | None = None

    @classmethod
    def start(cls, outdir: Path, ct: CT, lungs: np.ndarray, lesions: np.ndarray, mode: str,
              seg_writer: SegWriter | None = None) -> _EarlyOutputs:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        # mkdir, not mkdtemp: the folder is renamed into OUTDIR, so it gets the user's usual permissions (umask)
        tmp = outdir.parent / f".{outdir.name}.tmp-{uuid.uuid4().hex[:12]}"  # see remove_staging_folders
        tmp.mkdir()
        early = cls(tmp)
        if mode == "volume" and ct.kind == "dicom":
            path = early.tmp / "segmentation.dcm"
            if seg_writer is None:
                from covidct.report.dicomseg import write_dicom_seg

                early.owner = ThreadPoolExecutor(max_workers=1)
                early.seg = early.owner.submit(write_dicom_seg, ct, lungs, lesions, path)
            else:
                early.seg = seg_writer(lungs, lesions, path)
        return early

    def discard(self) -> None:
        """Remove the temp folder (after the SEG writer is done with it; its errors are reported elsewhere)."""
        if self.seg is not None:
            wait([self.seg])
        if self.owner is not None:
            self.owner.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)


def remove_staging_folders(outdir: Path) -> None:
    """Remove the temp folders of ``outdir`` that killed runs left beside it (call only when nothing is
    writing ``outdir``: e.g. after the batch's workers were stopped mid-study)."""
    import glob

    for tmp in outdir.parent.glob(f".{glob.escape(outdir.name)}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def write_outputs(analysis: Analysis, outdir: Path, *, png: bool = False, html: bool = True, timings: dict | None = None,
                  early: _EarlyOutputs | None = None) -> dict[str, str]:
    """Write every output into ``outdir`` atomically: built in a temp folder, then moved in.

    ``early``: the temp folder and DICOM SEG :meth:`Analyzer.__call__` started (else both start here)."""
    import json

    from covidct.io import save_label_png, save_mask_nifti, save_overlay_png

    ct, lungs, lesions, report = analysis.ct, analysis.lungs, analysis.lesions, analysis.report
    t0 = time.perf_counter()
    outdir = Path(outdir)
    own = early is None
    if early is None:
        early = _EarlyOutputs.start(outdir, ct, lungs, lesions, report["mode"])
    tmp = early.tmp
    try:
        from covidct.report import slice_rows, validate_report

        files: dict[str, str | None] = {"lungs": None, "lesions": None, "dicom_seg": None, "html": None}
        # The slow writers (gzip, DICOM SEG encoding, overlay rendering) spend most of their time in C code
        # that releases the GIL, so they run side by side; each writes its own file in the temp folder.
        with ThreadPoolExecutor(max_workers=4) as pool:
            images = None
            if html and report["mode"] == "volume":
                from covidct.report.html import images_section

                images = pool.submit(images_section, ct, lungs, lesions)
            if report["mode"] == "volume":
                writes = [pool.submit(save_mask_nifti, lungs, ct, tmp / "lungs.nii.gz"),
                          pool.submit(save_mask_nifti, lesions, ct, tmp / "lesions.nii.gz")]
                seg = early.seg
                report["slices"] = slice_rows(ct, lungs, lesions)
                for w in writes:
                    w.result()
                files |= {"lungs": "lungs.nii.gz", "lesions": "lesions.nii.gz"}
                if seg is not None:
                    try:
                        seg.result()
                        files["dicom_seg"] = "segmentation.dcm"
                    except ValueError as exc:  # e.g. a .zip input whose files are gone: the rest still useful
                        report["warnings"].append(f"no DICOM SEG written: {str(exc).splitlines()[0]}")
            else:
                report["slices"] = slice_rows(ct, lungs, lesions)
                save_label_png(lungs[0], tmp / "lungs.png")
                save_label_png(lesions[0], tmp / "lesions.png")
                files |= {"lungs": "lungs.png", "lesions": "lesions.png"}
            images_html = images.result() if images is not None else None
        from covidct.labels import LESION_COLORS, LUNG_COLORS

        if report["mode"] == "slice":
            colors = {**{k + 10: v for k, v in LUNG_COLORS.items()}, **LESION_COLORS}
            combined = np.where(lesions[0] > 0, lesions[0], np.where(lungs[0] > 0, lungs[0] + 10, 0)).astype(np.uint8)
            save_overlay_png(ct.array[0], combined, tmp / "overlay.png", colors=colors)
            files["overlays"] = "overlay.png"
        elif png:
            from covidct.report.figures import save_slice_overlays

            keep = np.flatnonzero(((lungs > 0) | (lesions > 0)).reshape(ct.n_slices, -1).any(1))
            save_slice_overlays(ct, lungs, lesions, tmp / "slices", slices=keep)
            files["overlays"] = "slices/"
        if html:
            from covidct.report.html import write_html_report

            files["html"] = "report.html"
            report["outputs"] = files
            if timings is not None:  # the page shows the times up to the outputs stage
                report["timings_s"] = {k: round(float(v), 3) for k, v in timings.items()}
            write_html_report(ct, lungs, lesions, report, tmp / "report.html", images_html)
        files["json"] = "report.json"
        report["outputs"] = files
        if timings is not None:
            timings["outputs"] = time.perf_counter() - t0
            timings["total"] = sum(v for k, v in timings.items() if k != "total")
            report["timings_s"] = {k: round(float(v), 3) for k, v in timings.items()}
        validate_report(report)
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        _move_into(tmp, outdir)
    finally:
        if own:
            early.discard()
    analysis.outdir = outdir
    analysis.files = files
    return files


def _move_into(tmp: Path, outdir: Path) -> None:
    """Publish a finished temp folder: a rename when ``outdir`` is new, else file-by-file replaces."""
    if not outdir.exists():
        os.replace(tmp, outdir)
        return
    for p in sorted(tmp.rglob("*")):
        target = outdir / p.relative_to(tmp)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            os.replace(p, target)


# --- the public verb -----------------------------------------------------------------------------

_SHARED: dict[tuple, Analyzer] = {}


def shared_analyzer(**kwargs) -> Analyzer:
    """One :class:`Analyzer` per process and settings (models are loaded once; used by batch workers)."""
    key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
    if key not in _SHARED:
        _SHARED[key] = Analyzer(**kwargs)
    return _SHARED[key]


def analyze(
    source: str | Path | CT, outdir: str | Path | None = None, *, analyzer: Analyzer | None = None, png: bool = False,
    html: bool = True, progress: Callable[[str], None] | None = None,
) -> Analysis:
    """Analyse one chest CT (path or :class:`CT`); write the outputs to ``outdir`` when given.

    ``progress`` (optional) is called with each stage's name as it starts: load, lungs, lesions,
    severity, outputs (the web service shows them).
    """
    from covidct.io import load_ct

    if progress is not None:
        progress("load")
    if isinstance(source, CT):  # loaded by the caller, who may have timed it (meta["_load_seconds"])
        ct = source
    else:
        t0 = time.perf_counter()
        ct = load_ct(source)
        ct.meta["_load_seconds"] = time.perf_counter() - t0
    analyzer = analyzer or shared_analyzer()
    return analyzer(ct, outdir, png=png, html=html, progress=progress)
