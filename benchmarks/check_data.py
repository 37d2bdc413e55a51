"""Real-data check of covidct.data on /work/shared/data (or $COVIDCT_DATA); skips cleanly without it.

Prints counts per source, alignment figures (CT100 masks vs Inf-Net GT mapped back, Inf-Net crops
vs CT100 pixels, Ma lung masks vs image intensities), the MedSeg splits, and writes one montage per
source to /tmp/data_check_<source>.png (mask contours on the images) to be looked at by eye.

    .venv/bin/python benchmarks/check_data.py
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def _montage(recs: list[dict], path: Path, title, overlays, window=None, ncol: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nrow = (len(recs) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.4 * nrow))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, r in zip(np.atleast_1d(axes).ravel(), recs, strict=False):
        lo, hi = window or (0, 255)
        ax.imshow(r["image"], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        for mask, colour in overlays(r):
            if mask is not None and mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=0.7)
        ax.set_title(title(r), fontsize=7)
    fig.suptitle(f"{path.stem}: front should be UP, heart/aortic arch on the image's RIGHT", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"  montage -> {path}")


def _check(ok: bool, what: str) -> bool:
    print(f"  [{'OK' if ok else 'FAIL'}] {what}")
    return ok


def main() -> int:
    from covidct.data import (
        check_groups_disjoint,
        data_root,
        infnet_consistent_split,
        load_covid_ct_md,
        load_covid_ct_md_volume,
        load_ma2020,
        load_medseg_ct100,
        load_medseg_infnet,
        load_ucsd,
        medseg_split_72_10_18,
    )

    root = data_root()
    if root is None or not root.is_dir():
        print("check_data: no data folder (set COVIDCT_DATA or provide ../shared/data); skipping")
        return 0
    print(f"data root: {root}")
    all_ok = True

    # ---------------------------------------------------------------- Ma et al.
    if (root / "ma2020-slices").is_dir():
        print("\n== ma2020-slices")
        ma = load_ma2020(root / "ma2020-slices")
        cases = Counter(r["case"] for r in ma)
        all_ok &= _check(len(ma) == 1276 and len(cases) == 16, f"{len(ma)} slices, {len(cases)} cases (1276/16)")
        print(f"  groups: {len({r['group'] for r in ma})}; flipped slices: {sum(r['meta']['flipped'] for r in ma)}")
        from scipy.ndimage import binary_fill_holes
        from skimage.filters import threshold_otsu

        ins, outs, frac_inf_in_lung, darker = [], [], [], 0
        for r in ma:
            img, lung = r["image"], r["lungs"] > 0
            body = binary_fill_holes(img > threshold_otsu(img)) & ~lung
            ins.append(img[lung].mean())
            outs.append(img[body].mean())
            darker += ins[-1] < outs[-1]
            frac_inf_in_lung.append((r["infection"] > 0)[lung].sum() / max(1, (r["infection"] > 0).sum()))
        all_ok &= _check(darker == len(ma), f"lungs darker than the rest of the body in {darker}/{len(ma)} slices")
        print(f"  mean grey inside lungs {np.mean(ins):.1f} vs body outside lungs {np.mean(outs):.1f}")
        print(f"  infection pixels inside the lung mask: median {np.median(frac_inf_in_lung):.3f}, "
              f"min {np.min(frac_inf_in_lung):.3f}")  # fmt: skip
        picks = []
        for c in sorted(cases, key=lambda s: int(s.split("-")[1])):
            rs = [r for r in ma if r["case"] == c]
            picks.append(rs[len(rs) // 2])
        _montage(
            picks, Path("/tmp/data_check_ma2020.png"),
            lambda r: f"{r['case']} file {r['id']} {'FLIPPED' if r['meta']['flipped'] else ''}",
            lambda r: [(r["lungs"], "deepskyblue"), (r["infection"], "red")],
        )  # fmt: skip

    # ---------------------------------------------------------------- MedSeg
    if (root / "medseg-ct100").is_dir():
        print("\n== medseg-ct100 (+ Inf-Net GT mapped back)")
        ct = load_medseg_ct100(root / "medseg-ct100")
        all_ok &= _check(len(ct) == 100, f"{len(ct)} slices (100)")
        have = [r for r in ct if r["lesions"] is not None]
        dice = {r["id"]: _dice(r["infection"], r["lesions"]) for r in have}
        extra = [r for r in have if r["meta"]["extra_region_pixels"] > 0]
        off = [i for i, d in dice.items() if d < 0.999]
        print(f"  slices with Inf-Net labels: {len(have)}; Dice(ct100 mask, Inf-Net GT) = 1.000 in "
              f"{sum(d >= 0.999 for d in dice.values())}, < 0.999 in {len(off)}")  # fmt: skip
        print(f"  Dice range on the others: {min(dice[i] for i in off):.3f}..{max(dice[i] for i in off):.3f}")
        big = [r for r in extra if r["meta"]["extra_region_pixels"] >= 50]
        print(f"  slices with any extra-region pixel: {len(extra)}; with >= 50 px: {len(big)} "
              f"(README: 25 slices with Dice 0.81-0.99)")  # fmt: skip
        outside = sum(r["meta"]["infnet_outside_mask_pixels"] for r in have)
        all_ok &= _check(outside == 0, f"Inf-Net labelled pixels outside the CT100 mask: {outside}")
        # Where are the extra regions? Centroid row/col as a fraction of the body box, and grey level.
        rows_rel, grey_extra, grey_ggo, grey_cons, sizes = [], [], [], [], []
        for r in big:
            m = r["meta"]["extra_region"] > 0
            body = np.argwhere(r["image"] > 60)
            (y0, x0), (y1, x1) = body.min(0), body.max(0)
            yy, _xx = np.argwhere(m).mean(0)
            rows_rel.append((yy - y0) / max(1, y1 - y0))
            grey_extra.append(r["image"][m].mean())
            sizes.append(int(m.sum()))
            if (r["lesions"] == 1).any():
                grey_ggo.append(r["image"][r["lesions"] == 1].mean())
            if (r["lesions"] == 2).any():
                grey_cons.append(r["image"][r["lesions"] == 2].mean())
        print(f"  extra regions (>= 50 px): size median {int(np.median(sizes))} px, centroid at "
              f"{np.median(rows_rel):.2f} of the body height from the front (0 front, 1 back), "
              f"posterior half in {sum(v > 0.5 for v in rows_rel)}/{len(rows_rel)}")  # fmt: skip
        print(f"  mean grey: extra {np.mean(grey_extra):.0f}, consolidation {np.mean(grey_cons):.0f}, "
              f"GGO {np.mean(grey_ggo):.0f} (same slices)")  # fmt: skip
        big_ids = [r["id"] for r in big]
        print(f"  extra-region slice ids: {' '.join(big_ids)}")
        picks = sorted(big, key=lambda r: -r["meta"]["extra_region_pixels"])[:8]
        picks += [r for r in ct if r["id"] in ("0", "1", "22", "62")]
        _montage(
            picks, Path("/tmp/data_check_medseg-ct100.png"),
            lambda r: f"ct100 {r['id']} ({r['meta']['infnet_split']}) extra={r['meta']['extra_region_pixels']}",
            lambda r: [
                (None if r["lesions"] is None else r["lesions"] == 1, "yellow"),
                (None if r["lesions"] is None else r["lesions"] == 2, "red"),
                (r["meta"]["extra_region"], "magenta"),
                (r["infection"] if r["lesions"] is None else None, "red"),
            ],
        )  # fmt: skip

        print("\n== medseg-infnet")
        tr = load_medseg_infnet(root / "medseg-infnet", "train", multiclass=True)
        te = load_medseg_infnet(root / "medseg-infnet", "test", multiclass=True)
        all_ok &= _check((len(tr), len(te)) == (50, 48), f"train {len(tr)} / test {len(te)} (50/48)")
        byid = {r["id"]: r for r in ct}
        corr, lesion_eq = [], 0
        for r in tr + te:
            x0, y0, x1, y1 = byid[r["id"]]["meta"]["infnet_box_xyxy"]
            crop = byid[r["id"]]["image"][y0:y1, x0:x1]
            corr.append(np.corrcoef(crop.ravel(), r["image"].ravel())[0, 1] if crop.shape == r["image"].shape else 0)
            lesion_eq += np.array_equal(r["lesions"], byid[r["id"]]["lesions"][y0:y1, x0:x1])
        all_ok &= _check(min(corr) > 0.95, f"Inf-Net crop (transposed back) vs CT100 pixels: correlation "
                         f"min {min(corr):.4f}, median {np.median(corr):.4f}")  # fmt: skip
        all_ok &= _check(lesion_eq == 98, f"Inf-Net lesions equal CT100 lesions in the box: {lesion_eq}/98")
        infnet_groups = {r["group"] for r in tr} & {r["group"] for r in te}
        print(f"  groups straddling Inf-Net train/test: {sorted(infnet_groups)}")
        _montage(
            [tr[i] for i in (0, 5, 10, 20)] + [te[i] for i in (0, 5, 10, 20)], Path("/tmp/data_check_medseg-infnet.png"),
            lambda r: f"infnet {r['meta']['infnet_split']} {r['id']} {r['image'].shape}",
            lambda r: [(r["lesions"] == 1, "yellow"), (r["lesions"] == 2, "red")],
        )  # fmt: skip

        print("\n== MedSeg splits")
        s = medseg_split_72_10_18(ct, seed=0)
        all_ok &= _check(check_groups_disjoint(ct, s) == [], "72/10/18: sizes "
                         f"{[len(s[k]) for k in ('train', 'val', 'test')]}, no group on two sides")  # fmt: skip
        inet = infnet_consistent_split(ct, n_val=10, seed=0)
        print(f"  Inf-Net-consistent: train {len(inet['train'])}, val {len(inet['val'])}, test {len(inet['test'])}")
        for d in inet.leaky_groups:
            print(f"    leaky group {d['group']}: train {d['train_ids']} / test {d['test_ids']}")

    # ---------------------------------------------------------------- UCSD
    if (root / "ucsd-covidct").is_dir():
        print("\n== ucsd-covidct")
        tr = load_ucsd(root / "ucsd-covidct", "train")
        va = load_ucsd(root / "ucsd-covidct", "val")
        all_ok &= _check((len(tr), len(va)) == (425, 118), f"train {len(tr)} / val {len(va)} (425/118)")
        for name, rs in (("train", tr), ("val", va)):
            c = Counter(r["class_label"] for r in rs)
            fm = Counter((r["meta"]["ext"], r["meta"]["format"], r["meta"]["mode"], r["class_label"]) for r in rs)
            print(f"  {name}: covid {c[1]} non-covid {c[0]}; (ext, format, mode, label): {dict(sorted(fm.items()))}")
        shared = {r["group"] for r in tr} & {r["group"] for r in va}
        print(f"  groups: train {len({r['group'] for r in tr})}, val {len({r['group'] for r in va})}; "
              f"in both lists: {len(shared)} ({', '.join(sorted(shared)[:5])}...)")  # fmt: skip
        picks = [tr[i] for i in (0, 60, 120, 180)] + [tr[i] for i in (200, 260, 330, 400)]
        _montage(picks, Path("/tmp/data_check_ucsd.png"),
                 lambda r: f"{Path(r['id']).name[:28]} y={r['class_label']} {r['meta']['mode']}",
                 lambda r: [])  # fmt: skip

    # ---------------------------------------------------------------- COVID-CT-MD
    if (root / "covid-ct-md" / "P001").is_dir():
        print("\n== covid-ct-md P001")
        recs = load_covid_ct_md(root / "covid-ct-md", "P001")
        pos = sum(r["slice_label"] for r in recs)
        all_ok &= _check((len(recs), pos) == (148, 80), f"{len(recs)} slices, {pos} positive (148/80)")
        vol, labels = load_covid_ct_md_volume(root / "covid-ct-md", "P001")
        z = [r["meta"]["slice_location"] for r in recs][::-1]
        all_ok &= _check(bool(np.all(np.diff(z) > 0)), f"volume {vol.shape} ascending SliceLocation {z[0]}..{z[-1]}")
        print(f"  HU range {vol.min():.0f}..{vol.max():.0f}; outside-body air (corner) {np.median(vol[:, :20, :20]):.0f}")
        print(f"  positive positions (descending order): {[i for i, r in enumerate(recs) if r['slice_label']][:3]}..."
              f"{[i for i, r in enumerate(recs) if r['slice_label']][-3:]}")  # fmt: skip
        picks = [recs[i] for i in (10, 30, 50, 65, 80, 95, 110, 130)]
        _montage(picks, Path("/tmp/data_check_covid-ct-md.png"),
                 lambda r: f"P001 pos {r['meta']['position']} z={r['meta']['slice_location']} label={r['slice_label']}",
                 lambda r: [], window=(-1350, 150))  # fmt: skip

    print("\nALL OK" if all_ok else "\nSOME CHECKS FAILED")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
