"""What the page shows and changes: CT slices as PNGs, mask overlays, click refinement revisions.

A revision is one click correction: ``revisions/NNN/`` holds the whole corrected masks
(``lesions.npy``/``lungs.npy``, canonical), their NIfTI (or PNG) files on the input's grid,
the recomputed ``report.json`` and ``refine.json`` (slice, clicks, base revision). The original
``result/`` is never modified; revision 0 is the original.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from covidct.labels import CONSOLIDATION, GGO, LESION_COLORS, LUNG_COLORS
from covidct.report.heatmap import MODEL_ONLY_NOTE, heatmap_rgba, probability_drew_lesions
from covidct.service.jobs import JobStore, load_ct_cache, save_mask, write_json_atomic
from covidct.volume import CT

# (low, high) HU of each preset: lung W1500/L-600, mediastinum W400/L40
WINDOWS: dict[str, tuple[float, float]] = {"lung": (-1350.0, 150.0), "mediastinum": (-160.0, 240.0)}
LAYERS = ("lungs", "lesions", "heatmap")


class ViewerError(Exception):
    """A request the viewer cannot answer; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)  # speed over size: local viewing
    return buf.getvalue()


def window_to_grey(image: np.ndarray, is_hu: bool, window: str) -> np.ndarray:
    """uint8 display of one slice: HU through the window preset; display images as they are."""
    if not is_hu:
        return np.clip(np.asarray(image, np.float32), 0, 255).astype(np.uint8)
    lo, hi = WINDOWS[window]
    g = (np.asarray(image, np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(g, 0, 255).astype(np.uint8)


def overlay_rgba(labels: np.ndarray, layer: str) -> np.ndarray:
    """RGBA overlay of one slice's labels: lesions filled; lungs a light fill with a solid outline."""
    h, w = labels.shape
    out = np.zeros((h, w, 4), np.uint8)
    colors = LESION_COLORS if layer == "lesions" else LUNG_COLORS
    for lab, rgb in colors.items():
        m = labels == lab
        if not m.any():
            continue
        out[m, :3] = rgb
        if layer == "lesions":
            out[m, 3] = 255
        else:
            edge = m & ~ndimage.binary_erosion(m)
            out[m, 3] = 70
            out[edge, 3] = 255
    return out


class JobViews:
    """Per-job cached data (CT memory map, masks per revision) and the refinement writer."""

    def __init__(self, store: JobStore, cache_size: int = 6) -> None:
        self.store = store
        self._cts: OrderedDict[str, CT] = OrderedDict()
        self._masks: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._guard = threading.Lock()
        self.cache_size = cache_size

    # --- reading ---------------------------------------------------------------------------------

    def _done_folder(self, job_id: str) -> Path:
        folder = self.store.folder(job_id)
        job = self.store.read(job_id)
        if job["status"] != "done":
            raise ViewerError(409, f"job {job_id} is {job['status']}, not done")
        return folder

    def ct(self, job_id: str) -> CT:
        with self._guard:
            if job_id in self._cts:
                self._cts.move_to_end(job_id)
                return self._cts[job_id]
        ct = load_ct_cache(self._done_folder(job_id) / "cache")
        with self._guard:
            self._cts[job_id] = ct
            while len(self._cts) > self.cache_size:
                self._cts.popitem(last=False)
        return ct

    def revision_dir(self, job_id: str, revision: int) -> Path:
        folder = self.store.folder(job_id)
        return folder / "result" if revision == 0 else folder / "revisions" / f"{revision:03d}"

    def resolve_revision(self, job_id: str, revision: int | None) -> int:
        latest = int(self.store.read(job_id).get("revision", 0))
        if revision is None or revision < 0:
            return latest
        if revision > latest:
            raise ViewerError(404, f"job {job_id} has no revision {revision} (latest is {latest})")
        return revision

    def masks(self, job_id: str, revision: int) -> tuple[np.ndarray, np.ndarray]:
        key = (job_id, revision)
        with self._guard:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        folder = self._done_folder(job_id)
        src = folder / "cache" if revision == 0 else self.revision_dir(job_id, revision)
        lungs = np.load(src / "lungs.npy", mmap_mode="r")
        lesions = np.load(src / "lesions.npy", mmap_mode="r")
        with self._guard:
            self._masks[key] = (lungs, lesions)
            while len(self._masks) > 4 * self.cache_size:
                self._masks.popitem(last=False)
        return lungs, lesions

    def report(self, job_id: str, revision: int) -> dict:
        return json.loads((self.revision_dir(job_id, revision) / "report.json").read_text())

    def _slice_index(self, ct: CT, k: int) -> int:
        if not 0 <= k < ct.n_slices:
            raise ViewerError(404, f"slice {k} is out of range (0..{ct.n_slices - 1})")
        return k

    def slice_png(self, job_id: str, k: int, window: str) -> bytes:
        ct = self.ct(job_id)
        k = self._slice_index(ct, k)
        return png(window_to_grey(ct.array[k], ct.is_hu, window))

    def overlay_png(self, job_id: str, k: int, layer: str, revision: int) -> bytes:
        ct = self.ct(job_id)
        k = self._slice_index(ct, k)
        if layer == "heatmap":  # the models' lesion probability of the analysis (corrections do not change it)
            return png(heatmap_rgba(np.asarray(self.lesion_probability(job_id)[k])))
        lungs, lesions = self.masks(job_id, revision)
        return png(overlay_rgba(np.asarray((lesions if layer == "lesions" else lungs)[k]), layer))

    def lesion_probability(self, job_id: str) -> np.ndarray:
        """The uint8 (p x 255) lesion probability volume, memory-mapped; 404 when no lesion model ran."""
        path = self._done_folder(job_id) / "cache" / "lesion_prob.npy"
        if not path.is_file():
            raise ViewerError(404, f"job {job_id} has no lesion probabilities (no lesion model ran)")
        return np.load(path, mmap_mode="r")

    def volume_info(self, job_id: str) -> dict:
        """What the viewer needs to lay out a job: shape, spacing, windows, revision, per-slice areas."""
        ct = self.ct(job_id)
        rev = self.resolve_revision(job_id, None)
        rep = self.report(job_id, rev)
        return {
            "id": job_id,
            "shape_zyx": list(ct.shape),
            "spacing_mm": [float(s) for s in ct.spacing],
            "spacing_known": bool(ct.spacing_known),
            "is_hu": bool(ct.is_hu),
            "windows": {k: list(v) for k, v in WINDOWS.items()} if ct.is_hu else {},
            "revision": rev,
            "heatmap": (self.store.folder(job_id) / "cache" / "lesion_prob.npy").is_file(),
            # what the heatmap shows where the HU rule drew the lesions (None where the models drew them)
            "heatmap_note": None if probability_drew_lesions(rep) else MODEL_ONLY_NOTE,
            "report": rep,
        }

    def materialize(self, job_id: str, revision: int, name: str) -> Path | None:
        """A revision's report.html or segmentation.dcm, written on first request; None if it cannot be."""
        rev_dir = self.revision_dir(job_id, revision)
        path = rev_dir / name
        if path.is_file() or revision == 0 or name not in ("report.html", "segmentation.dcm"):
            return path if path.is_file() else None
        with self.store.lock(job_id):
            if path.is_file():
                return path
            ct = self.ct(job_id)
            lungs, lesions = (np.asarray(a) for a in self.masks(job_id, revision))
            report = self.report(job_id, revision)
            tmp = rev_dir / f".{uuid.uuid4().hex[:8]}.{name}"
            try:
                if name == "report.html":
                    from covidct.report.html import write_html_report

                    write_html_report(ct, lungs, lesions, report, tmp)
                elif ct.kind == "dicom":  # the source DICOM files are still in the job's input folder
                    from covidct.report.dicomseg import write_dicom_seg

                    write_dicom_seg(ct, lungs, lesions, tmp)
                else:
                    return None
                tmp.replace(path)
            except (ImportError, ValueError) as exc:
                raise ViewerError(500, f"{name} could not be written for revision {revision}: {exc}") from exc
            finally:
                tmp.unlink(missing_ok=True)
        return path

    # --- refinement ------------------------------------------------------------------------------

    def refine(self, job_id: str, k: int, clicks: list[dict], base_revision: int | None) -> dict:
        """Apply clicks on slice ``k`` to the lesion mask of ``base_revision`` → a new revision."""
        from covidct.report import validate_report

        t0 = time.perf_counter()
        folder = self._done_folder(job_id)
        ct = self.ct(job_id)
        k = self._slice_index(ct, k)
        h, w = ct.shape[1:]
        for c in clicks:
            if not (0 <= c["x"] < w and 0 <= c["y"] < h):
                raise ViewerError(422, f"click ({c['x']}, {c['y']}) is outside the {w}×{h} slice")
        with self.store.lock(job_id):
            job = self.store.read(job_id)
            latest = int(job.get("revision", 0))
            base = latest if base_revision is None else self.resolve_revision(job_id, base_revision)
            base_lungs, base_lesions = self.masks(job_id, base)
            cur_lungs, cur_lesions = self.masks(job_id, latest)
            image = np.asarray(ct.array[k], np.float32)
            old = np.asarray(base_lesions[k])
            if clicks:
                mask = _run_refine(image, old, clicks, ct.is_hu)
                if mask.shape != (h, w):
                    raise ViewerError(500, f"refinement returned a {mask.shape} mask for a {(h, w)} slice")
            else:  # no clicks left (all undone): the base revision's slice as it was
                mask = old > 0
            new_slice = np.where(mask, old, 0).astype(np.uint8)
            added = mask & (old == 0)
            new_slice[added] = added_lesion_types(added, image, ct.is_hu)[added]
            lesions = np.array(cur_lesions)  # a full copy: the other slices keep their latest state
            lungs = np.array(cur_lungs)
            lesions[k] = new_slice
            lungs[k] = _absorb_slice(np.asarray(base_lungs[k]), new_slice)
            n = latest + 1
            rev_dir = folder / "revisions" / f"{n:03d}"
            tmp = folder / "revisions" / f".{n:03d}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.mkdir(parents=True)
            try:
                save_mask(lesions, tmp / "lesions.npy")
                save_mask(lungs, tmp / "lungs.npy")
                orig = self.report(job_id, 0)
                report = _recompute_report(ct, lungs, lesions, orig, n, k, len(clicks))
                files = _write_revision_files(ct, lungs, lesions, report, tmp)
                report["outputs"] = files
                report["revision"]["seconds"] = round(time.perf_counter() - t0, 3)
                validate_report(report)
                write_json_atomic(tmp / "report.json", report)
                write_json_atomic(tmp / "refine.json", {"slice": k, "clicks": clicks, "base_revision": base})
                tmp.rename(rev_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            revs = list(job.get("revisions", [])) + [{"revision": n, "slice": k, "clicks": len(clicks), "base": base}]
            self.store.update(job_id, revision=n, revisions=revs, summary=_summary(report))
        return {
            "revision": n,
            "slice": k,
            "slice_lesion_px": int((new_slice > 0).sum()),
            "slices": report["slices"],
            "involvement_percent": report["involvement_percent"],
            "severity": report["severity"],
            "diagnosis": report["diagnosis"],
            "pattern": report["pattern"],
            "lesions": report["lesions"],
        }


def _run_refine(image: np.ndarray, old: np.ndarray, clicks: list[dict], is_hu: bool) -> np.ndarray:
    """covidct.interactive.refine on one slice, its failures as ViewerErrors with one-line reasons."""
    from covidct.errors import CovidCTError, ModelError

    try:
        from covidct import interactive
    except ImportError as exc:
        raise ViewerError(501, f"click refinement is not available in this build ({exc})") from exc
    try:
        mask = interactive.refine(
            image, (old > 0).astype(np.uint8),
            [interactive.Click(x=int(c["x"]), y=int(c["y"]), positive=bool(c["positive"])) for c in clicks],
            is_hu=is_hu,
        )
    except ModelError as exc:  # e.g. no click model shipped yet: the service works, this feature does not
        raise ViewerError(503, f"click refinement unavailable: {str(exc).splitlines()[0]}") from exc
    except CovidCTError as exc:
        raise ViewerError(422, str(exc).splitlines()[0]) from exc
    return np.asarray(mask).astype(bool)


def added_lesion_types(added: np.ndarray, image: np.ndarray, is_hu: bool) -> np.ndarray:
    """Classes of the lesion pixels a click added (``added``; 0 elsewhere), by density as the pipeline types them:
    HU below / above -300 HU; a display slice by the shipped lesion card's density typing
    (:func:`covidct.preprocess.lesion_types_by_density`), GGO where no card asks for it."""
    from covidct.preprocess import lesion_types_by_density

    out = np.zeros(added.shape, np.uint8)
    if is_hu:
        out[added & (image < -300)] = GGO
        out[added & (image >= -300)] = CONSOLIDATION
        return out
    out[added] = GGO
    typing = _display_typing()
    return out if typing is None else lesion_types_by_density(out, image, **typing)


@lru_cache(maxsize=1)
def _display_typing() -> dict | None:
    """The shipped lesion card's density typing, read once per process (not on every click)."""
    from covidct.errors import ModelError
    from covidct.models import runtime, zoo

    try:
        _, card = zoo.resolve_model_path("lesions")
    except ModelError:  # no lesion model shipped: GGO, as before
        return None
    return runtime.density_typing({"card": None if card is None else json.loads(Path(card).read_text())})


def _summary(report: dict) -> dict:
    from covidct.service.jobs import summary_of

    return summary_of(report)


def _absorb_slice(lungs_k: np.ndarray, lesions_k: np.ndarray) -> np.ndarray:
    """GGO/consolidation pixels outside the lung label join the nearest lung (as the pipeline does)."""
    infection = (lesions_k == GGO) | (lesions_k == CONSOLIDATION)
    missing = infection & (lungs_k == 0)
    if not missing.any() or not lungs_k.any():
        return lungs_k
    _, idx = ndimage.distance_transform_edt(lungs_k == 0, return_indices=True)
    out = lungs_k.copy()
    out[missing] = lungs_k[tuple(idx)][missing]
    return out


def _recompute_report(ct: CT, lungs: np.ndarray, lesions: np.ndarray, orig: dict, n: int, k: int, n_clicks: int) -> dict:
    from covidct.pipeline import build_report, diagnose, measure
    from covidct.pipeline.densitometry import start_densitometry
    from covidct.report import slice_rows

    mode = orig.get("mode", "volume")
    # the lung's density follows the revised lung mask (lesions added outside it join it); beside the rest, as in
    # the pipeline, so a click's revision does not wait for it
    lung_density = start_densitometry(ct, lungs, mode)
    sev = measure(ct, lungs, lesions, mode)
    diag, pattern = diagnose(ct, lungs, lesions, sev, mode)
    models = list(orig.get("models", [])) + [{"name": "click-refinement", "version": "1", "sha256": None}]
    warnings = list(orig.get("warnings", []))
    # timings stay those of the original analysis (the schema wants them); the revision's own are in "revision"
    report = build_report(ct, mode, sev, diag, models, dict(orig.get("timings_s", {})), warnings, pattern=pattern,
                          lung_density=lung_density())
    report["input"]["analysed_box_yx"] = orig.get("input", {}).get("analysed_box_yx")
    # the models' probabilities, and so their uncertainty, are the original analysis's: clicks do not change them
    report["uncertainty"] = orig.get("uncertainty")
    kept = [{key: row.get(key) for key in ("uncertain_mm2", "lesion_entropy_bits")} for row in orig.get("slices", [])]
    report["slices"] = slice_rows(ct, lungs, lesions, kept if len(kept) == ct.n_slices else None)
    report["revision"] = {"number": n, "refined_slice": k, "clicks": n_clicks, "original_kept": "result/"}
    return report


def _write_revision_files(ct: CT, lungs: np.ndarray, lesions: np.ndarray, report: dict, out: Path) -> dict[str, str | None]:
    """The revision's masks on the input's grid, now; the HTML report and DICOM SEG are made on first
    download (:meth:`JobViews.materialize`): they take seconds on a real CT and a click must not."""
    from covidct.io import save_label_png, save_mask_nifti

    files: dict[str, str | None] = {"lungs": None, "lesions": None, "dicom_seg": None, "html": None}
    if report["mode"] == "volume":
        save_mask_nifti(lungs, ct, out / "lungs.nii.gz")
        save_mask_nifti(lesions, ct, out / "lesions.nii.gz")
        files |= {"lungs": "lungs.nii.gz", "lesions": "lesions.nii.gz"}
        if ct.kind == "dicom":
            files["dicom_seg"] = "segmentation.dcm"
    else:
        save_label_png(lungs[0], out / "lungs.png")
        save_label_png(lesions[0], out / "lesions.png")
        files |= {"lungs": "lungs.png", "lesions": "lesions.png"}
    files["html"] = "report.html"
    files["json"] = "report.json"
    return files
