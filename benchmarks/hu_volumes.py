"""Lungs and lesions on every whole HU volume in ../shared/data, and on lesion-free phantoms: one table.

Volumes: covid-ct-md P001 (COVID-19) and cap001 (pneumonia), with radiologists' slice labels
(labels_slice.csv); covid-ct-md normal001 (normal patient); lidc-idri LIDC-IDRI-0001 (healthy lungs
scored outside the four readers' nodule contours grown by --nodule-margin mm); chest-misc cip-ct-64
(lung Dice against wholeLung-64); chest-misc totalseg-example (healthy lung bases of an abdominal CT);
lesion-free phantoms (seeds 200..: the HU rule's settings were chosen with them; seeds 210-213 on other
grids and slice thicknesses, never used to choose anything). Versions of the four covid-ct-md / LIDC series with
2x and 3x thicker slices (slices averaged), interpolated to a half and a third of their slice spacing (linear in z: smoother
than a real thin acquisition, it shows what depends on the number of slices), as if acquired on a half and a third of
it (each slice repeated with noise that averages back to it: ``covidct.evaluate.acquisitions.thin_acquired``), under a simulated sharp
reconstruction kernel at two levels (``covidct.evaluate.hu_volumes.sharp_kernel_simulated``), with their lung
made 100 HU denser, as after a shallow breath (``shallow_breath_simulated``), and gapped: every third of their slices
(``covidct.evaluate.acquisitions.gapped_slices``).

Methods, one row each per volume so every figure has the baseline and the floor beside it:
- ``shipped``: ``covidct analyze`` (``Analyzer()``) as it is on this branch;
- ``HU count``: voxels −700..−300 HU inside the filled HU lung mask (< −320 HU);
- ``rule floor``: issue 17's no-learning rule (see ``covidct.evaluate.hu_volumes.rule_floor``);
- ``LCTA affected``: 3D Slicer Lung CT Analyzer's "affected" lung at its default ranges (infiltrated + collapsed,
  −750..0 HU: ``covidct.pipeline.densitometry``) inside the shipped lung mask (LCTA asks for lung masks; its own
  segmenter offers lungmask's), the threshold floor issue 17 names;
- ``before`` (``--before DIR``): the masks an earlier version left in its ``--cache`` folder;
- ``hu-rules LOO`` (``--loo``): the HU lesion rule (``covidct.pipeline.hu_rules``) on the working grid with
  the settings chosen without the volume (see ``benchmarks/hu_volumes_loo.py``).
Figures: slice-level infection AUC (lesion area per slice as the score), false lesion mL / % of lung on
lesion-free lungs, lung mL, lung-mask leaks (mL in the neck / below the lung base / in the mediastinum),
lung Dice (cip-ct-64), diagnosis, seconds. The ``scored`` column says whether the method was tuned on the
volume (LOO: refitted without it) or not (held-out).

Usage: python benchmarks/hu_volumes.py [--data DIR] [--phantoms N] [--loo] [--cache DIR] [--before DIR] [--json OUT]
       [--only NAME ...]   (--only =NAME: that volume only, not its derived versions)
Skips (exit 0) when the data folder is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from covidct.evaluate.acquisitions import gapped_slices, thin_acquired
from covidct.evaluate.hu_volumes import (
    build_table,
    dice,
    false_lesions,
    hu_count_per_slice,
    hu_lung_reference,
    lung_leaks,
    roc_auc,
    rule_floor,
    scoring_note,
    shallow_breath_simulated,
    sharp_kernel_simulated,
    slice_auc,
    thick_slabs,
    thin_interpolated,
)
from covidct.pipeline.densitometry import lcta_affected
from hu_volumes_loo import loo_case, loo_rows, series_name  # noqa: E402  (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
SHARP_LEVELS = ((1.5, 45.0), (3.5, 100.0))  # sharp_kernel_simulated's (boost, noise HU)
SHALLOW_BREATH_HU = 100.0  # shallow_breath_simulated's shift
GAPPED_EVERY = 3  # gapped_slices' k
# volumes each method was tuned on (LOO bookkeeping): the HU rules have fixed, a-priori settings
TUNED_ON: dict[str, list[str]] = {"before": [], "shipped": [], "HU count": [], "rule floor": [], "LCTA affected": []}
# the volumes the shipped HU lesion rule's settings were chosen on (setting 11 of benchmarks/hu_volumes_loo.py,
# 2026-12-05; docs/BENCHMARKS.md "HU volumes"): the shipped rows of these are marked "tuned on"
# (also the HU rule's vessel_share, chosen on phantoms 200-202: docs/BENCHMARKS.md "Phantom vessel trees");
# compared by the name before its first " (", so that thick-slice rows of these count too
SETTINGS_CHOSEN_ON = {"P001", "cap001", "normal001", "LIDC-IDRI-0001", "cip-ct-64", "totalseg lung bases",
                      "phantom 200", "phantom 201", "phantom 202"}
# lesion-free phantoms never used to choose a setting: seed, (z, y, x) shape, spacing mm
HELD_OUT_PHANTOMS = [(210, (100, 320, 320), (2.5, 1.1, 1.1)), (211, (70, 256, 256), (3.0, 1.5, 1.5)),
                     (212, (40, 256, 256), (6.0, 1.5, 1.5)), (213, (100, 320, 320), (2.5, 1.1, 1.1))]
COLUMNS = [("volume", "volume"), ("method", "method"), ("scored", "scored"), ("auc", "slice AUC"),
           ("false_ml", "false lesion mL"), ("false_pct", "false % of lung"), ("lung_ml", "lung mL"),
           ("neck_ml", "leak neck mL"), ("mediastinum_ml", "leak mediastinum mL"), ("below_ml", "leak below base mL"),
           ("trachea_ml", "lung on trachea mL"),
           ("lung_dice", "lung Dice"), ("lesion_ml", "lesion mL"), ("diagnosis", "diagnosis"), ("seconds", "s")]


def volumes(data: Path, n_phantoms: int) -> list[dict]:
    """Every whole HU volume present, with what it is scored on."""
    from covidct.data.covid_ct_md import read_slice_labels
    from covidct.io import load_ct
    from covidct.io.nrrd import load_nrrd

    out = []
    md = data / "covid-ct-md"
    labels = read_slice_labels(md) if md.is_dir() else {}
    for name in ("P001", "cap001", "normal001"):
        if (md / name).is_dir():
            out.append({"name": name, "load": lambda p=md / name: load_ct(p), "slice_labels": labels.get(name),
                        "lesion_free": name == "normal001"})
    lidc = data / "lidc-idri" / "LIDC-IDRI-0001"
    if lidc.is_dir():
        out.append({"name": "LIDC-IDRI-0001", "load": lambda: load_ct(lidc), "lesion_free": True,
                    "nodules_xml": next(iter(sorted(lidc.glob("*.xml"))), None)})
    cip = data / "chest-misc" / "cip-ct-64"
    if (cip / "ct-64.nrrd").exists():
        out.append({"name": "cip-ct-64", "load": lambda: load_ct(cip / "ct-64.nrrd"), "lesion_free": True,
                    "lung_truth": lambda: load_nrrd(cip / "wholeLung-64.nrrd").array > 0})
    ts = data / "chest-misc" / "totalseg-example" / "example_ct.nii.gz"
    if ts.exists():
        out.append({"name": "totalseg lung bases", "load": lambda: load_ct(ts), "lesion_free": True})
    # thick-slice versions of the thin-slice real series (k slices averaged): clinical COVID-19 CT is often
    # read at 4-6 mm, where vessels crossing a slice look like GGO (partial volume); not in the shipping rule
    # of the first candidate, added with the second
    for base in [v for v in out if v["name"] in ("P001", "cap001", "normal001", "LIDC-IDRI-0001")]:
        for k in (2, 3):
            out.append({**base, "name": f"{base['name']} ({k}x thicker slices)", "thick": k, "load_native": base["load"],
                        "load": None, "slice_labels": None, "labels_of": base.get("slice_labels"),
                        "nodules_xml": base.get("nodules_xml")})
    # the same series interpolated to a third of their slice spacing (0.67-0.83 mm): the HU rule's settings were
    # chosen on 2-2.5 mm slices; on these, what depends on the number of slices shows (sixteenth session). Smoother
    # through-plane than a real thin acquisition: a check, not a scanner.
    # Also to half their spacing (1.0-1.25 mm, the commonest thin reconstructions; nineteenth session).
    for base in [v for v in out if v["name"] in ("P001", "cap001", "normal001", "LIDC-IDRI-0001")]:
        for k in (3, 2):
            out.append({**base, "name": f"{base['name']} (interpolated to 1/{k} slice spacing)", "thin": k,
                        "load_native": base["load"], "load": None, "slice_labels": None,
                        "labels_of": base.get("slice_labels"), "nodules_xml": base.get("nodules_xml")})
    # ... and as if acquired on 1/2 and 1/3 of their slice spacing (thirty-fifth session): each slice repeated with
    # noise that averages back to it and makes each thin slice sqrt(k) times as noisy (evaluate.acquisitions.
    # thin_acquired). Sharper through-plane than the interpolated rows, as a real thin slice is; a model, not a scanner.
    for base in [v for v in out if v["name"] in ("P001", "cap001", "normal001", "LIDC-IDRI-0001")]:
        for k in (3, 2):
            out.append({**base, "name": f"{base['name']} (acquired at 1/{k} slice spacing, simulated)", "acquired": k,
                        "simulated": True, "load_native": base["load"], "load": None, "slice_labels": None,
                        "labels_of": base.get("slice_labels"), "nodules_xml": base.get("nodules_xml")})
    # the same series under a simulated sharp ("lung") reconstruction kernel, two levels (lung noise about 35 and
    # 55 HU against 21-24 HU; eighteenth session): no sharp-kernel series is in ../shared. A check, not a scanner.
    for base in [v for v in out if v["name"] in ("P001", "cap001", "normal001", "LIDC-IDRI-0001")]:
        for boost, noise in SHARP_LEVELS:
            out.append({**base, "name": f"{base['name']} (simulated sharp kernel {boost:g}/{noise:g} HU)", "simulated": True,
                        "load": lambda b=base["load"], bo=boost, no=noise: sharp_kernel_simulated(b(), bo, no)})
    # ... gapped: every third of their slices, as thick as before (an incremental acquisition, or a subset of a series'
    # slices; twenty-sixth session). The HU rule's 3-D vessel filter reads such neighbours as touching.
    for base in [v for v in out if v["name"] in ("P001", "cap001", "normal001", "LIDC-IDRI-0001")]:
        out.append({**base, "name": f"{base['name']} (every 3rd slice, gapped)", "gapped": GAPPED_EVERY, "simulated": True,
                    "load_native": base["load"], "load": None})
    # ... and with their lung 100 HU denser, as after a shallow breath (nineteenth session). A check, not a scan.
    for base in [v for v in out if v["name"] in ("P001", "cap001", "normal001", "LIDC-IDRI-0001")]:
        out.append({**base, "name": f"{base['name']} (simulated shallow breath, lung +{SHALLOW_BREATH_HU:g} HU)",
                    "simulated": True, "load": lambda b=base["load"]: shallow_breath_simulated(b(), SHALLOW_BREATH_HU)})
    from covidct.phantom import make_phantom

    for s in range(200, 200 + n_phantoms):
        out.append({"name": f"phantom {s} (lesion-free)", "phantom": True, "lesion_free": True,
                    "load": lambda s=s: make_phantom(seed=s, shape=(56, 256, 256), lesions=False, effusion=False).ct})
    # never used to choose anything: other seeds, grids and slice thicknesses
    for s, shape, spacing in HELD_OUT_PHANTOMS if n_phantoms else []:
        out.append({"name": f"phantom {s} (lesion-free, {spacing[0]:g} mm)", "phantom": True, "lesion_free": True,
                    "held_out": True,
                    "load": lambda s=s, sh=shape, sp=spacing: make_phantom(seed=s, shape=sh, spacing=sp, lesions=False,
                                                                          effusion=False).ct})
    return out


def _diagnose(ct, lungs, lesions) -> str:
    """The diagnosis stage of this version on these masks."""
    from covidct.pipeline import diagnosis, measure

    d, pattern = diagnosis.diagnose(ct, lungs, lesions, measure(ct, lungs, lesions, "volume"), "volume")
    near = ", borderline" if (pattern or {}).get("borderline") else ""  # a one-voxel mask change could flip it
    return f"{d['label']} ({d['probabilities'].get('covid19', float('nan')):.2f}{near})"


def shipped(ct, cache: Path | None, name: str,
            analyzer) -> tuple[np.ndarray, np.ndarray, str, float, list[str] | None]:
    """Lungs, lesions, diagnosis, seconds and the warnings' opening words (None from a cache of an older version)."""
    f = cache / _cache_name(name) if cache else None
    if f is not None and f.exists():
        z = np.load(f)
        warnings = [str(w) for w in z["warnings"]] if "warnings" in z.files else None
        return z["lungs"], z["lesions"], str(z["diagnosis"]), float(z["seconds"]), warnings
    t0 = time.perf_counter()
    res = analyzer(ct, None, html=False)
    sec = time.perf_counter() - t0
    d = res.report["diagnosis"]
    diag = f"{d['label']} ({d['probabilities'].get('covid19', float('nan')):.2f})"
    warnings = [" ".join(w.split()[:8]) for w in res.report.get("warnings", [])]  # enough to tell which fired
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(f, lungs=res.lungs, lesions=res.lesions, diagnosis=diag, seconds=sec,
                            warnings=np.array(warnings, dtype=str))
    return res.lungs, res.lesions, diag, sec, warnings


def score(vol: dict, ct, method: str, lung: np.ndarray, lesion: np.ndarray, extra: dict, ref: np.ndarray,
          exclude: np.ndarray | None, lung_is_model: bool) -> dict:
    """One table row: the figures that apply to this volume."""
    sp = ct.spacing
    row = {"volume": vol["name"], "method": method, "scored": scoring_note(vol["name"], TUNED_ON.get(method, [])), **extra}
    if method == "shipped" and series_name(vol["name"]) in SETTINGS_CHOSEN_ON:
        row["scored"] = "tuned on"  # the HU rule's settings were chosen with this patient: see its LOO row
    infection = lesion.astype(bool)
    vox_ml = float(np.prod(sp)) / 1000.0
    row["lung_ml"] = float((lung > 0).sum() * vox_ml)
    row["lesion_ml"] = float(infection.sum() * vox_ml)
    if vol.get("slice_labels"):
        row["auc"] = slice_auc(ct, infection, vol["slice_labels"])
    elif vol.get("y") is not None:  # thick slabs: one label per slab
        keep = np.flatnonzero(vol["y"] >= 0)
        row["auc"] = roc_auc(infection.reshape(len(infection), -1).sum(1)[keep], vol["y"][keep])
    if vol.get("lesion_free"):
        fl = false_lesions(infection, lung > 0, sp, exclude)
        row["false_ml"], row["false_pct"] = fl["false_ml"], fl["false_pct"]
    if lung_is_model:
        row.update(lung_leaks(lung, ct.array, sp, ref))
        if "lung_truth" in vol:
            row["lung_dice"] = dice(lung > 0, vol["lung_truth"]())
    return row


def run(data: Path, n_phantoms: int, cache: Path | None, before: Path | None, loo: bool,
        nodule_margin: float, only: list[str] | None = None) -> list[dict]:
    """The table's rows (``only``: just the volumes whose name holds one of these strings, or is one written
    after ``=``)."""
    from covidct.pipeline import Analyzer

    analyzer = Analyzer()
    rows: list[dict] = []
    loo_cases: list[dict] = []
    for vol in volumes(data, n_phantoms):
        if only and not any(vol["name"] == o[1:] if o.startswith("=") else o in vol["name"] for o in only):
            continue
        native = nearest = None  # a derived version: the series it is made from; for a thin one, each slice's original
        if vol.get("thick"):
            native = vol["load_native"]()
            ct, y = thick_slabs(native, vol["thick"], vol.get("labels_of"))
            vol = {**vol, "y": y}
        elif vol.get("thin"):
            native = vol["load_native"]()
            ct, y, nearest = thin_interpolated(native, vol["thin"], vol.get("labels_of"))
            vol = {**vol, "y": y}
        elif vol.get("acquired"):
            native = vol["load_native"]()
            ct, y, nearest = thin_acquired(native, vol["acquired"], vol.get("labels_of"))
            vol = {**vol, "y": y}
        elif vol.get("gapped"):  # its slices keep their files: the slice labels apply as they are
            native = vol["load_native"]()
            ct = gapped_slices(native, vol["gapped"])
            nearest = np.arange(0, native.n_slices, vol["gapped"])
        else:
            ct = vol["load"]()
        print(f"# {vol['name']}: {ct.shape} {tuple(round(s, 2) for s in ct.spacing)}", file=sys.stderr, flush=True)
        ref = hu_lung_reference(ct.array, ct.spacing)  # mediastinum not filled: the floor's and the leak checks' lung
        count_lung = hu_lung_reference(ct.array)  # every hole filled: the HU count's best case, as before
        exclude = None
        if vol.get("nodules_xml"):
            from covidct.evaluate.lidc import nodule_mask, parse_lidc_xml

            exclude = nodule_mask(native or ct, parse_lidc_xml(vol["nodules_xml"]), margin_mm=nodule_margin)
            if nearest is not None:  # each interpolated (kept) slice excluded where its (own) original slice is
                exclude = exclude[nearest]
            elif native is not None:  # the original series' nodules, a slab excluded where any of its slices is
                k = vol["thick"]
                n = (len(exclude) // k) * k
                exclude = exclude[:n].reshape(n // k, k, *exclude.shape[1:]).any(1)
        n0 = len(rows)
        if before is not None and (before / _cache_name(vol["name"])).exists():
            lungs, lesions, diag, sec, _ = shipped(ct, before, vol["name"], None)
            rows.append(score(vol, ct, "before", lungs, (lesions == 1) | (lesions == 2),
                              {"diagnosis": diag, "seconds": sec}, ref, exclude, True))
        lungs, lesions, _, sec, warnings = shipped(ct, cache, vol["name"], analyzer)
        diag = _diagnose(ct, lungs, lesions)  # this version's diagnosis stage, also on cached masks
        infection = (lesions == 1) | (lesions == 2)
        extra = {"diagnosis": diag, "seconds": sec, "warnings": warnings}
        rows.append(score(vol, ct, "shipped", lungs, infection, extra, ref, exclude, True))
        t0 = time.perf_counter()
        _, count_mask = hu_count_per_slice(ct.array, count_lung)
        rows.append(score(vol, ct, "HU count", count_lung, count_mask, {"seconds": time.perf_counter() - t0}, ref,
                          exclude, True))
        t0 = time.perf_counter()
        floor = rule_floor(ct.array, ct.spacing, ref)
        rows.append(score(vol, ct, "rule floor", ref, floor, {"seconds": time.perf_counter() - t0}, ref, exclude, False))
        t0 = time.perf_counter()
        rows.append(score(vol, ct, "LCTA affected", lungs, lcta_affected(ct.array, lungs),
                          {"seconds": time.perf_counter() - t0}, ref, exclude, False))
        # held-out phantoms choose nothing; thick-slice versions are held out with their series (loo_rows); the
        # interpolated thin versions choose nothing either (a check of slice count, smoother than a real scanner's)
        if loo and not vol.get("held_out") and not vol.get("thin") and not vol.get("simulated"):
            loo_cases.append(loo_case(vol, ct, lungs, exclude))
        for r in rows[n0:]:
            print(json.dumps(r), file=sys.stderr, flush=True)
    if loo:
        rows += loo_rows(loo_cases)
    return rows


def _cache_name(name: str) -> str:
    return f"{name.replace(' ', '_').replace('/', '-')}.npz"  # "1/3 slice spacing" is not a folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")  # ../shared/data beside the repo
    ap.add_argument("--phantoms", type=int, default=3)
    ap.add_argument("--loo", action="store_true", help="also choose the HU lesion rule's settings leave-one-volume-out")
    ap.add_argument("--cache", type=Path, default=None, help="keep the shipped pipeline's masks here between runs")
    ap.add_argument("--before", type=Path, default=None, help="a --cache folder of an earlier version: its rows too")
    ap.add_argument("--nodule-margin", type=float, default=10.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", action="append", default=None, help="only volumes whose name holds this, or, written =NAME, is NAME (=P001: the native series "
                    "without its derived versions; repeatable)")
    a = ap.parse_args()
    if not a.data.is_dir():
        print(f"skipped: no data folder {a.data}")
        return 0
    rows = run(a.data, a.phantoms, a.cache, a.before, a.loo, a.nodule_margin, a.only)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    print(build_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
