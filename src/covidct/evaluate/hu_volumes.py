"""Scoring lungs and lesions on whole HU volumes: references, no-learning floors and the table.

Owns what ``benchmarks/hu_volumes.py`` needs apart from running the methods:
- the HU-count baseline (voxels −700..−300 HU inside a filled HU lung mask) and the no-learning rule
  floor of issue 17 (HU lung mask eroded 3 mm in-plane, −700..−100 HU, opened 2 mm in-plane,
  components < 0.2 mL dropped);
- lung-mask leak checks against an HU lung reference (lung label above the apex, below the lung base
  in the same column, or in the mediastinum between the lungs);
- slice-level AUC, false lesion volume, lung Dice;
- leave-one-volume-out bookkeeping (which volumes a figure may have been fitted on);
- the markdown table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from covidct.pipeline.hu_rules import drop_small_components
from covidct.pipeline.lungs import trachea_from_neck
from covidct.preprocess import fill_holes_in_plane, threshold_lung_mask

GGO_RANGE = (-700.0, -300.0)


# --- references and floors -----------------------------------------------------------------------

def hu_lung_reference(hu: np.ndarray, spacing: Sequence[float] | None = None, threshold: float = -320.0,
                      max_hole_cm2: float = 10.0) -> np.ndarray:
    """Air below ``threshold`` inside the body (big 3-D components), with holes filled slice by slice:
    holes up to ``max_hole_cm2`` (vessels, nodules, dense lesions inside the lung), not the mediastinum that
    the two lungs enclose where they touch in front of and behind it (about 10 cm² and more at the junction
    lines, the heart far more). Without ``spacing`` every hole is filled."""
    from covidct.preprocess import IN_PLANE, inner_components

    air = threshold_lung_mask(hu, threshold)
    if spacing is None:
        return fill_holes_in_plane(air)
    holes = inner_components(~air)
    lbl, n = ndimage.label(holes, structure=IN_PLANE)
    if n == 0:
        return air
    area_cm2 = np.bincount(lbl.ravel()) * spacing[1] * spacing[2] / 100.0
    small = area_cm2 <= max_hole_cm2
    small[0] = False
    return air | small[lbl]


def in_plane_ball(spacing: Sequence[float], mm: float) -> np.ndarray:
    """(1, h, w) elliptical structuring element of radius ``mm`` in-plane."""
    ry, rx = (max(int(round(mm / s)), 0) for s in spacing[1:])
    yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
    return (((yy / max(ry, 1e-9)) ** 2 if ry else yy * 0.0) + ((xx / max(rx, 1e-9)) ** 2 if rx else xx * 0.0) <= 1.0)[None]


def hu_count_per_slice(hu: np.ndarray, lung: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The HU-count baseline: (per-slice voxel count, voxel mask) of −700..−300 HU inside the filled HU lung mask."""
    lung = hu_lung_reference(hu) if lung is None else lung  # the count's best case: every hole filled
    mask = lung & (hu > GGO_RANGE[0]) & (hu < GGO_RANGE[1])
    return mask.reshape(len(hu), -1).sum(1).astype(float), mask


def rule_floor(hu: np.ndarray, spacing: Sequence[float], lung: np.ndarray | None = None) -> np.ndarray:
    """Issue 17's no-learning lesion floor (bool mask): see the module docstring."""
    lung = hu_lung_reference(hu, spacing) if lung is None else lung
    core = ndimage.binary_erosion(lung, structure=in_plane_ball(spacing, 3.0))
    cand = core & (hu > -700) & (hu < -100)
    cand = ndimage.binary_opening(cand, structure=in_plane_ball(spacing, 2.0))
    return drop_small_components(cand, spacing, 0.2)


def thick_slabs(ct, k: int, slice_labels: dict[str, int] | None = None):
    """``ct`` as a scanner with ``k`` times thicker slices would show it: each run of ``k`` slices averaged
    (the partial volume of thick slices; a trailing incomplete run dropped), and per slab the infection
    label (1 when any of its slices is labelled infected, -1 when one is unlabelled) when ``slice_labels``
    (file name -> 0/1) is given. Returns (CT, labels or None)."""
    from pathlib import Path

    from covidct.volume import CT, SliceRef

    n = (ct.n_slices // k) * k
    arr = ct.array[:n].astype(np.float32).reshape(n // k, k, *ct.shape[1:]).mean(1)
    aff = ct.affine.copy()
    aff[:3, 2] *= k  # the z column of the (x, y, z) voxel -> world affine
    aff[:3, 3] += ct.affine[:3, 2] * (k - 1) / 2.0  # slab centres
    dz, dy, dx = ct.spacing
    slices = [SliceRef(index=i, z_mm=float(np.mean([s.z_mm for s in ct.slices[i * k:(i + 1) * k]])) if ct.slices
                       else i * dz * k) for i in range(n // k)]
    out = CT(array=arr, spacing=(dz * k, dy, dx), affine=aff, is_hu=ct.is_hu, kind="array",
             path=f"{ct.path}@{k}x" if ct.path else None, slices=slices)
    if slice_labels is None:
        return out, None
    files = [Path(s.file).name if s.file else None for s in ct.slices[:n]]
    lab = np.array([slice_labels.get(f, -1) if f else -1 for f in files]).reshape(n // k, k)
    return out, np.where((lab < 0).any(1), -1, lab.max(1))


def thin_interpolated(ct, k: int, slice_labels: dict[str, int] | None = None):
    """``ct`` on ``k`` times thinner slices, interpolated linearly in z: every ``k``-th slice is an original one, the
    slices between blend their two neighbours. Smoother through-plane than a real thin acquisition (no new noise,
    no sharper vessels): it tests what depends on the number of slices, not a scanner. With ``slice_labels`` (file
    name -> 0/1), each thin slice gets its nearest original slice's label (-1 where that one is unlabelled).
    Returns (CT, labels or None, the original slice of each thin slice)."""
    from pathlib import Path

    from covidct.pipeline.predict import interpolate_slices
    from covidct.volume import CT, SliceRef

    n = (ct.n_slices - 1) * k + 1
    original = np.arange(ct.n_slices) * k  # where the original slices fall among the thin ones
    arr = interpolate_slices(ct.array.astype(np.float32, copy=False), original, np.arange(n))
    aff = ct.affine.copy()
    aff[:3, 2] /= k  # the z column of the (x, y, z) voxel -> world affine
    dz, dy, dx = ct.spacing
    z_mm = np.array([s.z_mm for s in ct.slices] if ct.slices else np.arange(ct.n_slices) * dz, float)
    thin_z = np.interp(np.arange(n), original, z_mm)
    slices = [SliceRef(index=i, z_mm=float(thin_z[i])) for i in range(n)]
    out = CT(array=arr, spacing=(dz / k, dy, dx), affine=aff, is_hu=ct.is_hu, kind="array",
             path=f"{ct.path}@1/{k}" if ct.path else None, slices=slices)
    nearest = np.round(np.arange(n) / k).astype(int)  # <= n_slices - 1: the last thin slice is the last original
    if slice_labels is None:
        return out, None, nearest
    files = [Path(s.file).name if s.file else None for s in ct.slices]
    native = np.array([slice_labels.get(f, -1) if f else -1 for f in files])
    return out, native[nearest], nearest


def sharp_kernel_simulated(ct, boost: float, noise_hu: float, seed: int = 0):
    """``ct`` as if reconstructed with a sharper ("lung") kernel, simulated in the frequency domain, slice by slice:
    the spectrum multiplied by ``1 + boost * r**2`` (``r``: spatial frequency over the Nyquist frequency, at most 1),
    which sharpens edges and the noise already there, and added noise whose power rises linearly with ``r`` (filtered
    back-projection's ramp), of standard deviation ``noise_hu``. Only a model of a sharp reconstruction (a real one
    also resolves finer structure): no sharp-kernel series is in ../shared. Same ``seed``, same noise."""
    arr = ct.array.astype(np.float32, copy=False)
    fy = np.fft.fftfreq(arr.shape[1])[:, None]
    fx = np.fft.rfftfreq(arr.shape[2])[None, :]
    r = np.minimum(np.sqrt(fy**2 + fx**2) / 0.5, 1.0).astype(np.float32)
    spectrum = np.fft.rfft2(arr, axes=(1, 2))
    spectrum *= 1.0 + boost * r**2
    noise = np.fft.rfft2(np.random.default_rng(seed).standard_normal(arr.shape, dtype=np.float32), axes=(1, 2))
    noise *= np.sqrt(r)
    noise_img = np.fft.irfft2(noise, s=arr.shape[1:], axes=(1, 2))
    noise_img *= noise_hu / max(float(noise_img.std()), 1e-6)
    out = np.fft.irfft2(spectrum, s=arr.shape[1:], axes=(1, 2)) + noise_img
    return dataclasses.replace(ct, array=out.astype(np.float32), path=f"{ct.path}@sharp{boost:g}/{noise_hu:g}")


def _air_share_shift(values: np.ndarray, shift_hu: float) -> np.ndarray:
    """``values`` each moved by ``shift_hu`` times its air share, read from a linear mixture of aerated lung (-850 HU)
    and blood or soft tissue (40 HU): aerated lung moves by the whole shift, vessels and dense tissue stay."""
    return values + shift_hu * (1.0 - np.clip((values + 850.0) / 890.0, 0.0, 1.0))


def _smooth_noise(shape: tuple[int, ...], spacing: Sequence[float], blob_mm: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise smoothed to patches of about ``blob_mm`` (the random field the simulated patches are cut from)."""
    return ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), [blob_mm / s for s in spacing])


def shallow_breath_simulated(ct, shift_hu: float):
    """``ct`` with its lung denser, as after a shallower breath: inside the HU lung field (grown by two voxels) each
    voxel moves by ``shift_hu`` times its air share (:func:`_air_share_shift`), so vessels and dense lesions stay,
    aerated lung rises by about ``shift_hu``. Only a model: no series in ../shared was scanned at a shallow breath."""
    arr = ct.array.astype(np.float32, copy=True)
    field = ndimage.binary_dilation(threshold_lung_mask(arr), iterations=2)
    arr[field] = _air_share_shift(arr[field], shift_hu)
    return dataclasses.replace(ct, array=arr, path=f"{ct.path}@denser{shift_hu:g}")


def diffuse_disease_simulated(ct, share: float, shift_hu: float, seed: int = 0, blob_mm: float = 12.0):
    """``ct`` with GGO over ``share`` of its HU lung field, and that region (the truth): a smooth random field
    (:func:`_smooth_noise`) picks the share; there each voxel moves by ``shift_hu`` times its air share as in
    :func:`shallow_breath_simulated`, so vessels stay and aerated lung becomes GGO (+180: faint, about -670 HU; +250:
    about -600). Patchy, not peripheral: a check of how much diffuse disease is found, not of the pattern. Only a
    model: no series in ../shared has disease over most of the lung."""
    arr = ct.array.astype(np.float32, copy=True)
    field = threshold_lung_mask(arr)
    noise = _smooth_noise(arr.shape, ct.spacing, blob_mm, np.random.default_rng(seed))
    region = field & (noise >= np.quantile(noise[field], 1.0 - share))
    arr[region] = _air_share_shift(arr[region], shift_hu)
    return dataclasses.replace(ct, array=arr, path=f"{ct.path}@diffuse{share:g}+{shift_hu:g}"), region


def dependent_consolidation_simulated(ct, share: float, hu: float | None = None, seed: int = 0, effusion: bool = False):
    """``ct`` with airless lung along its dependent (posterior, supine) edge, as in severe COVID-19 or ARDS, and that
    region (the truth): in each column of the HU lung field the voxels within a depth of its posterior-most lung
    voxel, the depth chosen so that the band holds ``share`` of the field; there parenchyma (-920..-300 HU) becomes
    ``hu`` (default 35) plus noise (SD 20), while airways (air bronchograms) and vessels stay. ``effusion``: a pleural
    effusion instead, the whole band water (``hu`` default 10, noise SD 10, no bronchograms or vessels), the lung in
    front of it as if compressed. Only a model: no series in ../shared has either."""
    arr = ct.array.astype(np.float32, copy=True)
    field = threshold_lung_mask(arr)
    yy = np.arange(arr.shape[1], dtype=np.float32)[None, :, None]
    depth = (np.where(field, yy, -1.0).max(axis=1, keepdims=True) - yy) * float(ct.spacing[1])  # canonical y: posterior
    region = field & (depth <= np.quantile(depth[field], share))
    fill = region if effusion else region & (arr > -920.0) & (arr < -300.0)
    value, sd = (10.0 if hu is None else hu, 10.0) if effusion else (35.0 if hu is None else hu, 20.0)
    arr[fill] = value + np.random.default_rng(seed).normal(0.0, sd, int(fill.sum())).astype(np.float32)
    kind = "effusion" if effusion else "dependent"
    return dataclasses.replace(ct, array=arr, path=f"{ct.path}@{kind}{share:g}"), region


def emphysema_simulated(ct, share: float, hu: float = -975.0, blob_mm: float = 8.0, seed: int = 0,
                        subpleural: bool = False):
    """``ct`` with low-attenuation (emphysema-like) areas over ``share`` of its HU lung field, and that region: smooth
    random patches (:func:`_smooth_noise`; ``subpleural``: weighted towards the lung's border, as paraseptal
    emphysema) whose parenchyma (below -600 HU: vessels stay) becomes ``hu`` plus noise (SD 15). Only a model."""
    arr = ct.array.astype(np.float32, copy=True)
    field = threshold_lung_mask(arr)
    rng = np.random.default_rng(seed)
    noise = _smooth_noise(arr.shape, ct.spacing, blob_mm, rng)
    if subpleural:
        noise -= ndimage.distance_transform_edt(field, sampling=ct.spacing).astype(np.float32) / 15.0 * noise.std()
    region = field & (noise >= np.quantile(noise[field], 1.0 - share)) & (arr < -600.0)
    arr[region] = hu + rng.normal(0.0, 15.0, int(region.sum())).astype(np.float32)
    return dataclasses.replace(ct, array=arr, path=f"{ct.path}@emphysema{share:g}"), region


def field_of_view_cropped(ct, top: int = 0, bottom: int = 0, left: int = 0, right: int = 0):
    """``ct`` reconstructed with a tighter field of view: ``top`` / ``bottom`` rows and ``left`` / ``right`` columns
    taken off each slice (a large patient or a targeted reconstruction: the lungs may touch the image edge). The
    affine follows, so the slices keep their place. Only a model: no series in ../shared was reconstructed so."""
    from covidct.pipeline.grid import crop_in_plane

    h, w = ct.array.shape[1:]
    cut = crop_in_plane(ct, (slice(top, h - bottom), slice(left, w - right)))
    return dataclasses.replace(cut, array=np.ascontiguousarray(cut.array),
                               path=f"{ct.path}@fov{top},{bottom},{left},{right}")


def pixel_size_scaled(ct, factor: float):
    """``ct`` on a coarser or finer in-plane grid over the same field of view: pixels ``factor`` times as large (512²
    becomes 384² at 4/3, 768² at 2/3), linear interpolation. Only a model of another scanner's reconstruction matrix."""
    arr = ndimage.zoom(ct.array, (1, 1 / factor, 1 / factor), order=1, mode="nearest").astype(np.float32)
    dz, dy, dx = ct.spacing
    sy, sx = dy * ct.array.shape[1] / arr.shape[1], dx * ct.array.shape[2] / arr.shape[2]
    affine = ct.affine.copy()
    affine[:3, 0] *= sx / dx
    affine[:3, 1] *= sy / dy
    return dataclasses.replace(ct, array=arr, spacing=(dz, sy, sx), affine=affine, source_shape=None,
                               path=f"{ct.path}@pixel{factor:g}")


def outside_circle(h: int, w: int) -> np.ndarray:
    """(h, w) bool: outside the reconstruction circle inscribed in an h x w slice."""
    yy, xx = np.ogrid[:h, :w]
    return (yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2 > (min(h, w) / 2) ** 2


def outside_fov_padded(ct, value: float = -3024.0):
    """``ct`` with everything outside the reconstruction circle (inscribed in the slice) set to ``value``, as many
    scanners store it (-3024 or -2048 HU; LIDC-IDRI-0001 has -2048 there)."""
    arr = ct.array.copy()
    arr[:, outside_circle(*ct.array.shape[1:])] = value
    return dataclasses.replace(ct, array=arr, path=f"{ct.path}@padded{value:g}")


def display_windowed(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """``hu`` as 8-bit display values under a linear window (rounded, clipped to 0..255; float32), as a collection
    converted from windowed images stores a volume (``covidct.display_hu`` maps such volumes back to HU)."""
    lo = level - width / 2
    return np.clip(np.rint((np.asarray(hu) - lo) / width * 255.0), 0, 255).astype(np.float32)


# --- lung checks ---------------------------------------------------------------------------------

def _apex_base(ref: np.ndarray, spacing: Sequence[float], min_cm2: float = 10.0) -> tuple[int, int] | None:
    """Lowest and highest slices whose reference lung area reaches ``min_cm2`` (the trachea alone does not)."""
    area = ref.reshape(len(ref), -1).sum(1) * spacing[1] * spacing[2] / 100.0
    idx = np.flatnonzero(area >= min_cm2)
    return (int(idx.min()), int(idx.max())) if idx.size else None


def lung_leaks(lungs: np.ndarray, hu: np.ndarray, spacing: Sequence[float], ref: np.ndarray | None = None,
               margin_mm: float = 5.0) -> dict:
    """mL of lung label in the neck (above the reference apex + margin), below the lung base (under the
    reference's lowest lung voxel of the same column, minus margin) and in the mediastinum (outside the
    reference lung grown by the margin, inside the convex hull of both reference lungs, soft tissue > −320 HU), and
    on the trachea traced from the neck (``trachea_ml``; the lungs stage's own tracer, :func:`trachea_from_neck`:
    the reference counts the trachea's air as lung, so the other three cannot see it)."""
    from skimage.morphology import convex_hull_image

    ref = hu_lung_reference(hu, spacing) if ref is None else ref
    lab = lungs > 0
    vox_ml = float(np.prod(spacing)) / 1000.0
    span = _apex_base(ref, spacing)
    # the trachea: the HU reference counts its air as lung, so the checks below cannot see it labelled lung
    trachea_ml = float(np.count_nonzero(lab & trachea_from_neck(lab, hu, spacing)) * vox_ml)
    if span is None:
        return {"neck_ml": float(lab.sum() * vox_ml), "below_ml": 0.0, "mediastinum_ml": 0.0, "trachea_ml": trachea_ml}
    base, apex = span
    mz = int(np.ceil(margin_mm / spacing[0]))
    neck = lab[apex + mz + 1:].sum() * vox_ml
    # below the diaphragm: under the lowest reference lung voxel of that (y, x) column
    has = ref.any(0)
    lowest = np.where(has, ref.argmax(0), len(ref))
    zz = np.arange(len(ref))[:, None, None]
    below_mask = lab & has[None] & (zz < lowest[None] - mz)
    grown = ndimage.binary_dilation(ref, structure=in_plane_ball(spacing, margin_mm))
    medi = 0
    for k in range(base, min(apex + mz + 1, len(ref))):
        if not ref[k].any():
            continue
        hull = convex_hull_image(ref[k])
        medi += int((lab[k] & hull & ~grown[k] & (hu[k] > -320)).sum())
    return {"neck_ml": float(neck), "below_ml": float(below_mask.sum() * vox_ml), "mediastinum_ml": float(medi * vox_ml),
            "trachea_ml": trachea_ml}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else 1.0


# --- slice ranking and false lesions ---------------------------------------------------------------

def roc_auc(scores: Iterable[float], labels: Iterable[int]) -> float:
    """Mann–Whitney AUC (ties count half); NaN without both classes."""
    from scipy.stats import rankdata

    s, y = np.asarray(list(scores), float), np.asarray(list(labels), int)
    pos, neg = y == 1, y == 0
    if not pos.any() or not neg.any():
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def slice_auc(ct, infection: np.ndarray, labels: Mapping[str, int]) -> float:
    """Slice-level AUC of each slice's lesion area against ``labels`` (DICOM file name -> 0/1), over the slices of
    ``ct`` that have a label."""
    files = [Path(s.file).name if s.file else None for s in ct.slices]
    keep = [k for k, f in enumerate(files) if f in labels]
    return roc_auc(np.asarray(infection).reshape(len(infection), -1).sum(1)[keep], [labels[files[k]] for k in keep])


def false_lesions(lesion: np.ndarray, lung: np.ndarray, spacing: Sequence[float], exclude: np.ndarray | None = None) -> dict:
    """Lesion mL and % of lung on a lesion-free lung; ``exclude`` (e.g. nodules + margin) is left out of both."""
    keep = ~exclude if exclude is not None else np.ones(lesion.shape, bool)
    vox_ml = float(np.prod(spacing)) / 1000.0
    les = float((lesion.astype(bool) & keep).sum() * vox_ml)
    lung_ml = float((lung.astype(bool) & keep).sum() * vox_ml)
    return {"false_ml": les, "false_pct": 100.0 * les / lung_ml if lung_ml else float("nan"), "lung_ml": lung_ml}


# --- leave-one-volume-out bookkeeping ---------------------------------------------------------------

def loo_training_sets(volumes: Sequence[str], tuned_on: Iterable[str],
                      groups: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """For each volume, the volumes a method tuned on ``tuned_on`` may be fitted on when scoring it: every tuning
    volume except itself, and except every volume of its group (``groups``: volume -> patient; a series and its
    thick-slice versions are one patient) when given (leave-one-patient-out)."""
    tuned = [v for v in volumes if v in set(tuned_on)]
    group = (lambda v: groups.get(v, v)) if groups else (lambda v: v)
    return {v: [t for t in tuned if group(t) != group(v)] for v in volumes}


def scoring_note(volume: str, tuned_on: Iterable[str]) -> str:
    """How a figure on ``volume`` was obtained: 'held-out' (never tuned on) or 'LOO' (refitted without it)."""
    return "LOO" if volume in set(tuned_on) else "held-out"


def select_loo(volumes: Sequence[str], candidates: Sequence, objective: Callable[[object, list[str]], float],
               tuned_on: Iterable[str], groups: Mapping[str, str] | None = None) -> dict[str, object]:
    """Leave-one-volume-out (with ``groups``: leave-one-patient-out) selection: for each volume, the candidate
    setting with the best ``objective`` (higher is better) over its training set (ties: the first candidate)."""
    out: dict[str, object] = {}
    for v, train in loo_training_sets(volumes, tuned_on, groups).items():
        scores = [objective(c, train) for c in candidates]
        out[v] = candidates[int(np.argmax(scores))]
    return out


# --- the table ------------------------------------------------------------------------------------

def fmt(x, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def build_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table: ``columns`` are (key, header) pairs; a missing key prints '–'."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) if not isinstance(r.get(k), str) else r[k] for k, _ in columns) + " |"
            for r in rows]
    return "\n".join([head, sep, *body])
