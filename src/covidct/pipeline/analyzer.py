"""The orchestration of the stages: :class:`Analyzer` (models loaded once) and :func:`analyze`.

load → lungs → lesions → measures → diagnosis → outputs, each timed in the report; the models run on
the working grid (:mod:`covidct.pipeline.grid`) and the masks come back to the input's grid before
they are measured. Without shipped models (a development checkout before training), the lung and
lesion stages fall back to HU rules, and the report says so in ``models`` and ``warnings``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from covidct import slice_view
from covidct.display_hu import MAPPED_HU_UNCERTAINTY
from covidct.errors import NoLungsFound
from covidct.pipeline import (
    densitometry,
    diagnosis,
    hu_rules,
    lesions,
    load,
    lungs,
    measures,
    outputs,
    reporting,
)
from covidct.pipeline.grid import crop_in_plane, lung_field_box, paste_in_plane, working_grid
from covidct.pipeline.predict import BATCH_SIZE, ModelRunner
from covidct.pipeline.types import Analysis, LoadedModel, Masks, Study
from covidct.report.heatmap import HU_RULE_MODEL, uncertainty_warning
from covidct.slice_view import VIEWS
from covidct.volume import CT


class Analyzer:
    """Holds the models (loaded once) and analyses any number of CTs: ``Analyzer()(ct)``.

    ``lungs_model`` / ``lesions_model``: a shipped model name, a checkpoint path, or None for the
    HU-rule fallback. Missing shipped models fall back with a warning. ``ggo_floor_follows_lung``: on whole HU
    volumes the HU rule's GGO floor rises by as much as the best-aerated lung is denser than in full inspiration
    (for a scan at a shallow breath; :class:`covidct.pipeline.hu_rules.HULesionSettings`). ``slice_view``: "auto"
    analyses a slice image stored transposed in the radiological view (:mod:`covidct.slice_view`), "as-is" never.
    ``crop_models``: a slice image cut tight around its lungs is read by the lesion and infection models' crop versions
    where their cards name one (:data:`covidct.slice_view.CROP_SPAN`).
    """

    def __init__(
        self,
        lungs_model: str | Path | None = "lungs",
        lesions_model: str | Path | None = "lesions",
        infection_model: str | Path | None = "infection",
        bf16: bool = True,
        batch_size: int = BATCH_SIZE,
        lesion_min_hu: float = -800.0,
        min_lesion_mm3: float = 20.0,
        ggo_floor_follows_lung: bool = False,
        slice_view: str = "auto",
        crop_models: bool = True,
    ) -> None:
        from covidct.models import runtime, zoo

        if slice_view not in VIEWS:
            raise ValueError(f"slice_view must be one of {VIEWS}, not {slice_view!r}")
        self.slice_view = slice_view
        self.crop_models = crop_models
        self._crops: dict[str, LoadedModel | None] | None = None  # the crop versions, loaded at first need
        self.bf16 = bf16
        self.batch_size = batch_size
        self.lesion_min_hu = lesion_min_hu
        self.min_lesion_mm3 = min_lesion_mm3
        self.hu_settings = replace(hu_rules.DEFAULT, ggo_follows_aerated=ggo_floor_follows_lung)
        self.warnings: list[str] = []
        self.models: dict[str, LoadedModel | None] = {"lungs": None, "lesions": None, "infection": None}
        for role, name in (("lungs", lungs_model), ("lesions", lesions_model), ("infection", infection_model)):
            if name is None:
                continue
            if not zoo.has_model(name) and str(name) in ("lungs", "lesions", "infection"):
                if role != "infection":  # the infection model only sharpens the lesion extent: optional
                    self.warnings.append(f"shipped model '{name}' not found: using the HU-rule fallback for {role}")
                continue
            # ONNX Runtime for a shipped model; the torch checkpoint (batch norm folded) for a run folder
            net, info = runtime.load(name, optimise=True)
            self.models[role] = LoadedModel(net, info)

    def _runner(self, ahead: bool = False, models: dict | None = None) -> ModelRunner:
        """``ahead``: the lesion model starts on the lung model's slices while the lung mask is post-processed."""
        return ModelRunner(bf16=self.bf16, batch_size=self.batch_size,
                           ahead={"lungs": (models or self.models)["lesions"]} if ahead else None)

    def _crop_versions(self) -> dict[str, LoadedModel | None] | None:
        """The models with the lesion and infection models replaced by their crop versions (their cards'
        ``crops_model``), loaded at first need; None when neither has one."""
        if self._crops is None:
            from covidct.models import runtime

            crops = dict(self.models)
            for role in ("lesions", "infection"):
                name = runtime.crops_model_name(self.models[role].info.get("card")) if self.models[role] is not None else None
                if name:
                    crops[role] = LoadedModel(*runtime.load(name, optimise=True))
            self._crops = crops if any(crops[r] is not self.models[r] for r in ("lesions", "infection")) else {}
        return self._crops or None

    def segment_lungs(self, ct: CT, runner: ModelRunner | None = None) -> np.ndarray:
        """The lungs stage on ``ct``: (z, y, x) uint8, 0 background, 1 left lung, 2 right lung."""
        return lungs.segment_lungs(ct, self.models["lungs"], runner or self._runner())

    def segment_lesions(self, ct: CT, lung_labels: np.ndarray, runner: ModelRunner | None = None,
                        probability: dict | None = None, mapped_hu: bool = False,
                        models: dict | None = None) -> np.ndarray:
        """The lesions stage on ``ct``: (z, y, x) uint8, 0 none, 1 GGO, 2 consolidation, 3 pleural effusion.
        ``probability``: receives the lesion probability (see :func:`covidct.pipeline.lesions.segment_lesions`);
        ``mapped_hu``: ``ct`` is a display-range volume mapped to approximate HU (covidct.display_hu); ``models``:
        other models than the analyzer's (its crop versions, which also read lesions outside the lung mask: on crops the
        lung network leaves much of the lesions out of it; docs/BENCHMARKS.md, thirty-fifth session)."""
        read_as_crop = models is not None and models is self._crops
        models = models or self.models
        return lesions.segment_lesions(ct, lung_labels, runner or self._runner(models=models), models["lesions"],
                                       models["infection"], self.lesion_min_hu, self.min_lesion_mm3,
                                       probability, self.hu_settings,
                                       hu_uncertainty=MAPPED_HU_UNCERTAINTY if mapped_hu else 0.0,
                                       within_lungs=not read_as_crop)

    def __call__(
        self, ct: CT, outdir: str | Path | None = None, *, png: bool = False, html: bool = True,
        progress: Callable[[str], None] | None = None, seg_writer: outputs.SegWriter | None = None,
        heatmap: bool = False, keep_probability: bool | None = None,
    ) -> Analysis:
        """Analyse ``ct``; ``progress`` (optional) is called with each stage's name as it starts.

        ``heatmap`` writes the lesion probability too; ``keep_probability`` (default: ``heatmap``) keeps it on
        ``ct``'s grid in the returned analysis (the service's viewer does). Bringing it to a 512² grid costs
        about 0.15 s, so it is done only when something uses it.

        ``seg_writer`` (optional) starts writing the DICOM SEG: called with (lungs, lesions, path)
        it returns a future; the default writes it in a thread from this ``ct``. Either way it starts
        as soon as the masks are final, so the SEG (the slowest output) overlaps the severity, the
        report and the other outputs.
        """
        stage = progress or (lambda _name: None)
        t = {"load": float(ct.meta.get("_load_seconds", 0.0))}
        study = load.study_of(ct, self.warnings)
        ct = study.ct  # a display-range volume mapped to HU is analysed as such
        masks = self._masks_in_view(study, t, stage, heatmap if keep_probability is None else keep_probability)
        if outdir is None:
            return self._finish(study, masks, t, stage)
        early = outputs.EarlyOutputs.start(Path(outdir), ct, masks.lungs, masks.lesions, study.mode, seg_writer)
        try:
            analysis = self._finish(study, masks, t, stage)
            stage("outputs")
            outputs.write_outputs(analysis, Path(outdir), png=png, html=html, timings=t, early=early, heatmap=heatmap)
        finally:
            early.discard()
        return analysis

    def _masks(self, ct: CT, t: dict, stage: Callable[[str], None], keep_probability: bool,
               models: dict | None = None) -> Masks:
        """The lungs and lesions stages on the working grid, their masks brought back to ``ct``'s grid; on a box
        centred on the lungs where they are narrow in a wide field of view (:func:`grid.lung_field_box`).
        ``models``: other models than the analyzer's (its crop versions)."""
        stage("lungs")
        t0 = time.perf_counter()
        box = lung_field_box(ct)
        if box is None:
            return self._masks_in(ct, t, stage, keep_probability, t0, models)
        masks = self._masks_in(crop_in_plane(ct, box), t, stage, keep_probability, t0, models)
        for name in ("lungs", "lesions", "lesion_probability"):
            if getattr(masks, name) is not None:
                setattr(masks, name, paste_in_plane(getattr(masks, name), ct.shape, box))
        masks.box = box
        return masks

    def _masks_in_view(self, study: Study, t: dict, stage: Callable[[str], None], keep_probability: bool) -> Masks:
        """:meth:`_masks` of the study; a slice image that looks stored transposed is analysed in the radiological
        view and its masks put back in its own layout, and one cut tight around its lungs is read by the crop
        versions of the lesion models, each with a note (:mod:`covidct.slice_view`). Volumes as stored: their
        geometry gives their orientation."""
        ct, lung_model = study.ct, self.models["lungs"]
        layout = None
        if study.mode == "slice" and lung_model is not None and (self.slice_view == "auto" or self.crop_models):
            layout = slice_view.slice_layout(ct.array[0], ct.is_hu, (lung_model.net, lung_model.info))
        models = self._crop_versions() if self.crop_models and layout is not None and layout.cut_tight else None
        if models:
            study.warnings.append(slice_view.crops_note(*dict.fromkeys(
                models[r].info.get("name", "") for r in ("lesions", "infection") if models[r] is not self.models[r])))
        if not (self.slice_view == "auto" and layout is not None and layout.transposed):
            return self._masks(ct, t, stage, keep_probability, models)
        masks = self._masks(slice_view.transposed(ct), t, stage, keep_probability, models)
        for name in ("lungs", "lesions", "lesion_probability"):
            if getattr(masks, name) is not None:
                setattr(masks, name, np.ascontiguousarray(getattr(masks, name).transpose(0, 2, 1)))
        masks.box = None if masks.box is None else (masks.box[1], masks.box[0])
        study.warnings.append(slice_view.TRANSPOSED_NOTE)
        return masks

    def _masks_in(self, ct: CT, t: dict, stage: Callable[[str], None], keep_probability: bool, t0: float,
                  models: dict | None = None) -> Masks:
        """:meth:`_masks` on ``ct`` as it is (``t0``: when the lungs stage started)."""
        # work at the models' resolution (about 256² in-plane): 4x fewer voxels for a 512² series
        work, factor = working_grid(ct)
        runner = self._runner(ahead=True, models=models)  # its cache of normalised slices is shared by the models
        try:
            lung_labels = self.segment_lungs(work, runner)
            t["lungs"] = time.perf_counter() - t0
            if not lung_labels.any():
                raise NoLungsFound(f"no lungs found in {ct.path or 'the input'}: is this a chest CT?")
            stage("lesions")
            t0 = time.perf_counter()
            prob: dict = {}
            lesion_labels = self.segment_lesions(work, lung_labels, runner, prob, bool(ct.meta.get("display_window")),
                                                 models)
        finally:
            runner.close()
        del runner
        masks = lesions.final_masks(ct, lung_labels, lesion_labels, factor, prob.get("lesion"), work.spacing,
                                    keep_probability=keep_probability)
        masks.hu_rule = prob.get("hu_rule")
        t["lesions"] = time.perf_counter() - t0
        return masks

    def _finish(self, study: Study, masks: Masks, t: dict, stage: Callable[[str], None]) -> Analysis:
        """The measures and diagnosis stages, and the report of the final masks."""
        ct, mode, warnings = study.ct, study.mode, study.warnings
        stage("severity")
        t0 = time.perf_counter()
        lung_density = densitometry.start_densitometry(ct, masks.lungs, mode)
        severity = measures.measure(ct, masks.lungs, masks.lesions, mode)
        t["severity"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        finding, pattern = diagnosis.diagnose(ct, masks.lungs, masks.lesions, severity, mode)
        t["diagnosis"] = time.perf_counter() - t0
        hu_rule = hu_rules.applies(ct.is_hu, ct.n_slices)  # GGO/consolidation came from the HU rule
        if mode == "volume":
            # a scan that cuts the lungs makes their volumes partial: its warning then speaks for the asymmetry too
            warnings.extend(diagnosis.coverage_warnings(masks.lungs, ct.spacing) or diagnosis.asymmetry_warnings(severity))
            warnings.extend(slice_view.transposed_volume_warnings(masks.lungs)
                            or slice_view.flipped_volume_warnings(masks.lungs, ct.array if ct.is_hu else None))
        if mode == "volume" and (hu_rule or self.models["infection"] is not None):
            warnings.extend(diagnosis.low_involvement_warnings(severity, hu_rule=hu_rule))
            # on thin slices the HU rule may add vessels: its figures are then not the lower bounds measured on 2.5-5 mm
            warnings.extend(diagnosis.thin_slice_warnings(ct, hu_rule)
                            or diagnosis.conservative_extent_warnings(severity, hu_rule))
            warnings.extend(diagnosis.gapped_slice_warnings(ct, hu_rule))
            warnings.extend(diagnosis.metal_warnings(ct, masks.lungs, hu_rule))
            warnings.extend(diagnosis.noise_warnings(masks.hu_rule) + diagnosis.density_warnings(masks.hu_rule)
                            + diagnosis.airless_warnings(masks.hu_rule))
        info = {role: m.info if m is not None else None for role, m in self.models.items()}
        models = [reporting.model_entry(info["lungs"], "hu-threshold-lungs"),
                  reporting.model_entry(info["lesions"], "hu-rule-lesions")]
        if hu_rule:  # GGO/consolidation from the HU rule; the lesion model gave the effusion only
            models.append(reporting.model_entry(None, HU_RULE_MODEL))
        elif info["infection"]:
            models.append(reporting.model_entry(info["infection"], ""))
        uncertainty = dict(masks.uncertainty or {})
        if hu_rule and uncertainty.get("uncertain_ml") is not None:
            # the lesion model's own view: here it does not draw the GGO/consolidation masks, so no warning
            uncertainty["method"] += ("; on this HU volume GGO and consolidation come from the HU rule: these "
                                      "figures describe the lesion model, not the masks")
        else:
            warning = uncertainty_warning(uncertainty)
            if warning:
                warnings.append(warning)
        report = reporting.build_report(ct, mode, severity, finding, models, t, warnings, pattern=pattern,
                                        analysed_box=masks.box,
                                        lung_density=lung_density())
        report["uncertainty"] = uncertainty if masks.uncertainty is not None else None
        return Analysis(ct=ct, lungs=masks.lungs, lesions=masks.lesions, report=report,
                        lesion_probability=masks.lesion_probability, slice_uncertainty=masks.slice_uncertainty)


_SHARED: dict[tuple, Analyzer] = {}


def shared_analyzer(**kwargs) -> Analyzer:
    """One :class:`Analyzer` per process and settings (models are loaded once; used by batch workers)."""
    key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
    if key not in _SHARED:
        _SHARED[key] = Analyzer(**kwargs)
    return _SHARED[key]


def analyze(
    source: str | Path | CT, outdir: str | Path | None = None, *, analyzer: Analyzer | None = None, png: bool = False,
    html: bool = True, progress: Callable[[str], None] | None = None, heatmap: bool = False,
) -> Analysis:
    """Analyse one chest CT (path or :class:`CT`); write the outputs to ``outdir`` when given.

    ``progress`` (optional) is called with each stage's name as it starts: load, lungs, lesions,
    severity, outputs (the web service shows them).
    """
    if progress is not None:
        progress("load")
    ct = load.load_input(source)
    analyzer = analyzer or shared_analyzer()
    return analyzer(ct, outdir, png=png, html=html, progress=progress, heatmap=heatmap)
