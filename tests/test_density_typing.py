"""GGO against consolidation on display slices from density (rule R34, docs/BENCHMARKS.md, "Lesion type from density
on display slices"): the shipped lesion cards ask for it; `segment`, `evaluate` and `analyze` type alike; HU slices
keep the network's types."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidct.cli import main
from covidct.evaluate import evaluate
from covidct.models import runtime, zoo
from covidct.phantom import make_phantom
from covidct.pipeline import Analyzer, analyze
from covidct.preprocess import apply_window, lesion_types_by_density


def _slice() -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit slice: dark lung, a faint opacity (left), a dense one (right), soft tissue around; every opacity
    labelled GGO, and a strip labelled effusion."""
    img = np.full((96, 96), 40.0, np.float32)
    img[:8], img[-8:] = 230.0, 230.0  # chest wall
    img[30:60, 15:40] = 110.0  # ground glass
    img[30:60, 56:81] = 225.0  # consolidation
    labels = np.zeros(img.shape, np.uint8)
    labels[30:60, 15:40] = 1
    labels[30:60, 56:81] = 1
    labels[80:86, 20:70] = 3
    return img, labels


def test_lesion_types_follow_density():
    img, labels = _slice()
    typed = lesion_types_by_density(labels, img, sigma_px=3.0, threshold=0.525)
    assert np.array_equal(typed > 0, labels > 0)  # the extent is kept
    assert np.array_equal(typed == 3, labels == 3)  # so is the effusion
    assert (typed[38:52, 23:32] == 1).all() and (typed[38:52, 64:73] == 2).all()
    # the dense opacity's blurred rim beside the dark lung reads as ground glass, as radiologists' outlines do not:
    # only the core has to be consolidation
    assert (typed[30:60, 15:40] == 1).all()
    # a window change (display values scaled and shifted) types the same
    assert np.array_equal(lesion_types_by_density(labels, 0.5 * img + 60.0, 3.0, 0.525), typed)
    blank = np.full(img.shape, 90.0, np.float32)
    assert np.array_equal(lesion_types_by_density(labels, blank, 3.0, 0.525), labels)  # no density to read


def test_only_the_lesion_cards_ask_for_it_and_only_display_slices_get_it():
    for name in ("lesions", "lesions-crops"):
        assert runtime.density_typing(runtime.load(name)[1]) == {"sigma_px": 3.0, "threshold": 0.525}
    for name in ("infection", "infection-crops", "lungs"):
        assert runtime.density_typing(runtime.load(name)[1]) is None
    img, labels = _slice()
    prob = np.eye(4, dtype=np.float32)[labels].transpose(2, 0, 1)  # the network: every opacity GGO
    info = {"task": "lesions", "card": {"density_typing": {"sigma_px": 3.0, "threshold": 0.525}}}
    display = runtime.labels_for_task([prob], info, "lesions", images=[img], is_hu=False)[0]
    assert np.array_equal(display, lesion_types_by_density(labels, img, 3.0, 0.525))
    assert (display == 2).any()
    assert np.array_equal(runtime.labels_for_task([prob], info, "lesions", images=[img], is_hu=True)[0], labels)
    assert np.array_equal(runtime.labels_for_task([prob], {"task": "lesions"}, "lesions", images=[img])[0], labels)
    assert np.array_equal(runtime.labels_for_task([prob], info, "lesions")[0], labels)  # no slices given


@pytest.fixture(scope="module")
def display_slice(tmp_path_factory):
    """A phantom's fullest lung slice with lesions as an 8-bit PNG (lung window), with its lesion labels."""
    ph = make_phantom(seed=4, shape=(20, 128, 128), spacing=(5.0, 2.5, 2.5), lesion_burden=0.3)
    k = int(np.argmax(((ph.lesions == 1) | (ph.lesions == 2)).reshape(ph.ct.n_slices, -1).sum(1)))
    img = (apply_window(ph.ct.array[k], "lung") * 255).astype(np.uint8)
    folder = tmp_path_factory.mktemp("display")
    Image.fromarray(img).save(folder / "slice.png")
    return folder / "slice.png", img, ph.lesions[k].astype(np.uint8)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else float("nan")


def test_segment_evaluate_and_analyze_type_a_display_slice_alike(display_slice, tmp_path):
    path, img, truth = display_slice
    assert main(["segment", str(path), "-o", str(tmp_path / "seg"), "--task", "lesions"]) == 0
    seg = np.asarray(Image.open(tmp_path / "seg" / "slice.png"))
    assert ((seg == 1) | (seg == 2)).any()
    # segment's types are the density's on its own extent
    assert np.array_equal(seg, lesion_types_by_density(seg, img.astype(np.float32), 3.0, 0.525))
    res = evaluate(zoo.resolve_model_path("lesions")[0], [{"id": "s", "image": img, "is_hu": False, "lesions": truth}],
                   "lesions", tmp_path / "eval")
    row = res["per_image"][0]
    for name, c in (("ggo", 1), ("consolidation", 2)):
        ours = _dice(seg == c, truth == c)
        if np.isfinite(ours):
            assert ours == pytest.approx(row[f"dice_{name}"], abs=1e-9)
    les = analyze(path, tmp_path / "an", analyzer=Analyzer()).lesions[0]
    assert np.array_equal(les, lesion_types_by_density(les, img.astype(np.float32), 3.0, 0.525))


def test_pixels_a_click_adds_in_the_viewer_are_typed_as_the_pipeline_types_them():
    from covidct.service.viewer import added_lesion_types

    img, labels = _slice()
    added = labels == 1
    typed = added_lesion_types(added, img, is_hu=False)
    assert np.array_equal(typed, lesion_types_by_density(added.astype(np.uint8), img, 3.0, 0.525))
    assert (typed[38:52, 64:73] == 2).all() and (typed[38:52, 23:32] == 1).all() and not typed[~added].any()
    hu = np.where(img > 200, 20.0, np.where(img > 100, -500.0, -850.0)).astype(np.float32)
    typed_hu = added_lesion_types(added, hu, is_hu=True)
    assert (typed_hu[added & (hu >= -300)] == 2).all() and (typed_hu[added & (hu < -300)] == 1).all()
