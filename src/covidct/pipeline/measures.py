"""Measures stage: lung and lesion volumes, involvement per lung and per zone, and the CT severity score."""

from __future__ import annotations

import numpy as np

from covidct.labels import CONSOLIDATION, EFFUSION, GGO, LEFT_LUNG, RIGHT_LUNG
from covidct.preprocess import bounding_box
from covidct.volume import CT

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
    # bilateral / GGO-predominance for the findings rule of a single image (a volume's diagnosis reads the
    # pattern, covidct.pattern, which measures its own peripheral share)
    tot_inf = pl["left"]["infection"] + pl["right"]["infection"]
    res["ggo_fraction"] = (pl["left"]["ggo"] + pl["right"]["ggo"]) / tot_inf if tot_inf else 0.0
    res["bilateral"] = res["involvement"]["left"] >= 0.5 and res["involvement"]["right"] >= 0.5
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
