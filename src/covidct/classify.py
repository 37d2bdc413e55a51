"""Image and patient-level classification with the trained classifiers, and Grad-CAM heatmaps.

- :func:`classify_image`: one 2-D image (a paper figure, a screenshot, an HU slice) -> label and class
  probabilities with the model's stored decision threshold (binary models: ``p[positive] >= t``).
- :func:`classify_volume`: a 3-D CT -> COVID-19 / pneumonia / normal for the patient, aggregated from
  slice probabilities inside the lungs (see :func:`aggregate_slices` for how and why).
- :func:`grad_cam` / :func:`save_cam_overlay`: MONAI ``GradCAM`` heatmaps over the input, so a user sees
  what drove the decision (and can spot a model that looks at text, arrows or borders).

Models are names of shipped models (``covidct.models.zoo``), ``.pt`` checkpoints or run folders. Shipped models
run on ONNX Runtime (no torch import); checkpoints and Grad-CAM on torch (:mod:`covidct.models.runtime`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covidct.errors import ModelError, UnsupportedInput
from covidct.volume import CT

if TYPE_CHECKING:
    import torch

DEFAULT_IMAGE_MODEL = "covid-vs-noncovid"
PATIENT_CLASSES = ("covid19", "pneumonia", "normal")
# Aggregation: the patient's probabilities are the mean over the k most abnormal lung slices,
# k = max(MIN_TOP_K, TOP_FRACTION x lung slices) (see aggregate_slices).
TOP_FRACTION = 0.1
MIN_TOP_K = 3
MIN_LUNG_FRACTION = 0.2  # a slice counts as a lung slice when its lung area >= this x the largest one


def load_classifier(model: str | Path, runtime: str | None = None):
    """(network, info) of a classifier; ``info["label"]`` is ``name@version``. ``runtime="torch"`` for the
    checkpoint (Grad-CAM needs its gradients); by default ONNX Runtime where the model ships an ONNX file."""
    from covidct.models import runtime as runtimes
    from covidct.models import zoo
    from covidct.models.tasks import CLASSIFY_TASKS

    net, info = runtimes.load(model, runtime=runtime)
    if info.get("task") not in CLASSIFY_TASKS:
        raise ModelError(f"model {model} is a {info.get('task')} model, not a classifier "
                         f"({', '.join(CLASSIFY_TASKS)})")
    info = dict(info)
    name = (info.get("card") or {}).get("name") or Path(str(model)).stem
    if zoo.has_model(model) and not Path(str(model)).suffix and not Path(str(model)).exists():
        name = str(model)
    info["label"] = f"{name}@{info.get('version') or '0'}"
    return net, info


def predict_proba(model, info: dict, images: Sequence[np.ndarray], is_hu: bool | Sequence[bool],
                  batch_size: int = 16) -> np.ndarray:
    """Class probabilities (N, C) for 2-D images of any sizes (normalised and resized as in training), with
    whichever runtime ``info["runtime"]`` names."""
    from covidct.models import runtime
    from covidct.models.onnx_runtime import softmax

    imgs = list(images)
    flags = [bool(is_hu)] * len(imgs) if isinstance(is_hu, bool | np.bool_) else [bool(f) for f in is_hu]
    if not runtime.is_onnx(info):
        model.eval()
    out = []
    for i in range(0, len(imgs), batch_size):
        x = runtime.prepare_slices(imgs[i : i + batch_size], flags[i : i + batch_size], info)
        out.append(softmax(runtime.forward(model, info, x), axis=1))
    n_c = len(info.get("classes") or []) or 2
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, n_c))


def _threshold(info: dict) -> float | None:
    if len(info["classes"]) != 2:
        return None
    return float((info.get("thresholds") or {}).get("positive", 0.5))


def _result(prob: np.ndarray, info: dict) -> dict:
    from covidct.models.tasks import predict_labels

    classes = list(info["classes"])
    t = _threshold(info)
    k = int(predict_labels(prob[None], t)[0])
    return {"label": classes[k], "probabilities": {c: float(p) for c, p in zip(classes, prob, strict=True)},
            "threshold": t, "model": info["label"]}


def classify_images(images: Sequence[np.ndarray], is_hu: bool | Sequence[bool],
                    model: str | Path = DEFAULT_IMAGE_MODEL, batch_size: int = 16) -> list[dict]:
    """:func:`classify_image` for many images in batches."""
    net, info = load_classifier(model)
    prob = predict_proba(net, info, images, is_hu, batch_size)
    return [_result(p, info) for p in prob]


def classify_image(image: np.ndarray, is_hu: bool, model: str | Path = DEFAULT_IMAGE_MODEL) -> dict:
    """Classify one 2-D image (H, W): ``{"label", "probabilities": {class: p}, "threshold", "model"}``.

    ``is_hu``: HU values (a CT slice) or 8-bit display grey levels (figures, screenshots).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise UnsupportedInput(f"classify_image needs one 2-D image, got shape {img.shape}")
    return classify_images([img], is_hu, model)[0]


# --- patient level ----------------------------------------------------------------------------------------


def lung_slice_indices(lungs: np.ndarray, min_fraction: float = MIN_LUNG_FRACTION) -> np.ndarray:
    """Slices whose lung area is at least ``min_fraction`` of the largest slice's (apex/base slivers out)."""
    area = np.asarray(lungs).reshape(lungs.shape[0], -1).astype(bool).sum(1)
    if area.max(initial=0) == 0:
        return np.zeros(0, int)
    return np.flatnonzero(area >= min_fraction * area.max())


def aggregate_slices(slice_probs: np.ndarray, top_fraction: float = TOP_FRACTION,
                     min_k: int = MIN_TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Patient probabilities (C,) from slice probabilities (N, C); class 0 is the normal/negative class.

    How: rank the lung slices by abnormality ``1 - p[class 0]`` and average the probability vectors
    of the k most abnormal ones, ``k = max(min_k, top_fraction x N)`` (all slices if fewer).
    Why: COVID-19 pneumonia is often focal (a few peripheral lesions in some lobes), so the mean over
    all slices dilutes a clear finding among many normal slices, while the single most abnormal slice
    (max) turns one false-positive slice into a positive patient; the top-k mean keeps focal disease
    visible and needs several slices to agree. Returns (probabilities, indices of the k slices).
    """
    p = np.asarray(slice_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise UnsupportedInput("no lung slices to classify")
    k = int(min(p.shape[0], max(min_k, round(top_fraction * p.shape[0]))))
    top = np.argsort(-(1.0 - p[:, 0]), kind="mergesort")[:k]
    agg = p[top].mean(0)
    return agg / agg.sum(), np.sort(top)


def _lungs_of(ct: CT) -> np.ndarray:
    from covidct.preprocess import kmeans_lung_mask, threshold_lung_mask

    if ct.is_hu:
        return threshold_lung_mask(ct.array)
    return np.stack([kmeans_lung_mask(s) for s in ct.array])


def classify_volume(ct: CT, lungs: np.ndarray | None = None, model: str | Path | None = None,
                    infection_model: str | Path = "slice-infection",
                    covid_model: str | Path = DEFAULT_IMAGE_MODEL, batch_size: int = 16) -> dict:
    """Patient-level diagnosis of a 3-D CT from slice probabilities inside the lungs.

    ``lungs``: (z, y, x) lung mask (any labels > 0); default: the HU-threshold lung mask (k-means for
    display volumes). Only slices with enough lung (:func:`lung_slice_indices`) are classified, and
    their probabilities are aggregated by :func:`aggregate_slices`.

    With ``model`` (a classifier of any task) its classes are returned. Without it, a shipped
    ``three-class`` model is used when present; when neither it nor ``infection_model`` is available
    (no ``slice-infection`` model is shipped today: see docs/BENCHMARKS.md), the diagnosis is the one
    ``covidct analyze`` reports, from its lung and lesion findings (:func:`diagnosis_from_analysis`);
    otherwise two binary models are combined:
    ``p_abnormal`` = aggregated ``slice-infection`` probability, ``p_covid`` = mean ``covid-vs-noncovid``
    probability over the same top-k slices, and ``covid19 = p_abnormal x p_covid``, ``pneumonia =
    p_abnormal x (1 - p_covid)``, ``normal = 1 - p_abnormal``; the label is ``normal`` below the
    infection model's threshold, else ``covid19``/``pneumonia`` by the COVID model's threshold.
    Returns ``{"label", "probabilities", "threshold", "model", "slices", "aggregation"}``.
    """
    from covidct.models import zoo

    if ct.is_2d:
        raise UnsupportedInput("classify_volume needs a 3-D volume; use classify_image for one slice")
    lungs = _lungs_of(ct) if lungs is None else np.asarray(lungs)
    if lungs.shape != ct.array.shape:
        raise UnsupportedInput(f"lung mask shape {lungs.shape} != CT shape {ct.array.shape}")
    idx = lung_slice_indices(lungs)
    if idx.size == 0:
        from covidct.errors import NoLungsFound

        raise NoLungsFound("no lung slices found in the volume")
    slices = [ct.array[i] for i in idx]
    agg_doc = {"method": "mean of the top-k most abnormal lung slices", "k_rule":
               f"max({MIN_TOP_K}, {TOP_FRACTION} x lung slices)", "n_lung_slices": int(idx.size)}
    if model is None and zoo.has_model("three-class"):
        model = "three-class"
    if model is None and not zoo.has_model(infection_model) and str(infection_model) == "slice-infection":
        return diagnosis_from_analysis(ct)
    if model is not None:
        net, info = load_classifier(model)
        prob = predict_proba(net, info, slices, ct.is_hu, batch_size)
        agg, top = aggregate_slices(prob)
        res = _result(agg, info)
        res.update(slices=[int(idx[t]) for t in top], aggregation=agg_doc)
        return res
    net_i, info_i = load_classifier(infection_model)
    net_c, info_c = load_classifier(covid_model)
    p_inf = predict_proba(net_i, info_i, slices, ct.is_hu, batch_size)
    agg_i, top = aggregate_slices(p_inf)
    p_cov = predict_proba(net_c, info_c, [slices[t] for t in top], ct.is_hu, batch_size)[:, 1].mean()
    p_abn = float(agg_i[1])
    t_inf, t_cov = _threshold(info_i), _threshold(info_c)
    probs = {"covid19": p_abn * float(p_cov), "pneumonia": p_abn * (1 - float(p_cov)), "normal": 1 - p_abn}
    label = "normal" if p_abn < t_inf else ("covid19" if p_cov >= t_cov else "pneumonia")
    return {"label": label, "probabilities": probs, "threshold": t_inf,
            "model": f"{info_i['label']}+{info_c['label']}", "slices": [int(idx[t]) for t in top],
            "aggregation": {**agg_doc, "p_abnormal": p_abn, "p_covid_given_abnormal": float(p_cov),
                            "covid_threshold": t_cov}}


def diagnosis_from_analysis(ct: CT, top_k: int = MIN_TOP_K) -> dict:
    """The patient-level result of covidct's analysis (lungs, lesions, the diagnosis from the lesion pattern,
    :func:`covidct.pipeline.diagnose`) in :func:`classify_volume`'s form. ``slices``: the
    ``top_k`` slices with the largest lesion area (where Grad-CAM overlays are drawn)."""
    from covidct.pipeline import shared_analyzer

    analysis = shared_analyzer()(ct)
    report, diag = analysis.report, analysis.report["diagnosis"]
    area = (analysis.lesions > 0).reshape(len(analysis.lesions), -1).sum(1)
    top = np.argsort(-area, kind="mergesort")[: max(1, top_k)]
    return {"label": diag["label"], "probabilities": dict(diag["probabilities"]), "threshold": None,
            "model": "+".join(f"{m['name']}@{m['version']}" for m in report["models"]) + " (lesion pattern)",
            "slices": sorted(int(i) for i in top if area[i] > 0) or [int(np.argmax(area))],
            "aggregation": {"method": diag["method"], "involvement_percent": report["involvement_percent"]["total"]}}


# --- Grad-CAM -------------------------------------------------------------------------------------------


def _cam_layer(model: torch.nn.Module) -> str:
    """The last convolutional stage: MONAI ResNet ``layer4``, CompactCNN ``features``, else the last conv."""
    import torch

    names = [n for n, _ in model.named_modules()]
    for n in ("layer4", "features"):
        if n in names:
            return n
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        raise ModelError("Grad-CAM: the model has no convolution layer")
    return convs[-1]


def grad_cam(image: np.ndarray, is_hu: bool, model: str | Path = DEFAULT_IMAGE_MODEL,
             class_name: str | None = None) -> tuple[np.ndarray, dict]:
    """Grad-CAM heatmap (H, W) in [0, 1] at the image's own size, and the classification result.

    The map explains ``class_name`` (default: the predicted class).
    """
    import torch
    from monai.visualize import GradCAM

    from covidct.models.inference import model_input
    from covidct.preprocess import NormalisationConfig

    net, info = load_classifier(model, runtime="torch")
    img = np.asarray(image, np.float32)
    res = classify_images([img], is_hu, model)[0]
    classes = list(info["classes"])
    c = classes.index(class_name or res["label"])
    x = model_input(img, is_hu, NormalisationConfig.from_dict(info.get("normalisation")),
                    tuple(info.get("input_size") or (256, 256)))[None]
    cam = GradCAM(nn_module=net, target_layers=_cam_layer(net))
    with torch.enable_grad():
        m = cam(x.requires_grad_(True), class_idx=c)[0, 0].detach()
    m = torch.nn.functional.interpolate(m[None, None].float(), size=img.shape, mode="bilinear",
                                        align_corners=False)[0, 0].numpy()
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    net.zero_grad(set_to_none=True)
    return m.astype(np.float32), res


def save_cam_overlay(image: np.ndarray, cam: np.ndarray, path: str | Path, is_hu: bool = False,
                     alpha: float = 0.45, title: str | None = None) -> Path:
    """Write the image (grey) with the heatmap (jet colours, weighted by the map) as an RGB PNG."""
    import matplotlib
    from PIL import Image, ImageDraw

    from covidct.preprocess import apply_window

    img = np.asarray(image, np.float32)
    grey = apply_window(img, "lung") if is_hu else np.clip(img / 255.0, 0, 1)
    heat = matplotlib.colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    a = alpha * np.clip(cam, 0, 1)[..., None]
    rgb = (1 - a) * grey[..., None] + a * heat
    out = Image.fromarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8), "RGB")
    if title:
        ImageDraw.Draw(out).text((4, 4), title, fill=(255, 255, 0))
    from covidct.io.writers import atomic_write

    return atomic_write(path, lambda p: out.save(p, format="PNG"))  # no half-written PNG after Ctrl-C
