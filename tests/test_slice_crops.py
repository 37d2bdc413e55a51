"""Slice images cut tight around the lungs (covidct.slice_view.cut_tight) are read by the shipped crop versions of
the lesion models (their base cards' ``crops_model``), the same way by `covidct segment`, `covidct evaluate` and
`covidct analyze`; full slices and volumes never are."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from covidct.cli import main
from covidct.evaluate import evaluate
from covidct.io import load_ct
from covidct.models import runtime, zoo
from covidct.models.onnx_runtime import softmax
from covidct.phantom import make_phantom
from covidct.pipeline import Analyzer, analyze
from covidct.preprocess import apply_window
from covidct.slice_view import CROP_SPAN, crops_note, cut_tight


def test_cut_tight_from_the_lungs_box():
    mask = np.zeros((100, 200), bool)
    assert not cut_tight(mask)
    mask[20:80, 10:190] = True  # 0.9 of the width, 0.6 of the height
    assert not cut_tight(mask)
    mask[20:80, 3:197] = True  # 0.97 of the width
    assert cut_tight(mask) and cut_tight(mask.T)
    assert 0.9 < CROP_SPAN < 0.97


def test_the_base_cards_name_their_shipped_crop_versions():
    for base in ("infection", "lesions"):
        assert runtime.crops_model_name(runtime.load(base)[1]["card"]) == f"{base}-crops"
        assert runtime.crops_model_name(runtime.load(f"{base}-crops")[1]["card"]) is None
    assert runtime.crops_model_name(runtime.load("lungs")[1]["card"]) is None


@pytest.mark.parametrize("which", ["onnx", "torch"])
def test_the_crop_models_average_with_their_mirror_image_and_the_base_models_do_not(which):
    """The crop models' cards ask for test-time mirroring (chosen on validation crops, docs/BENCHMARKS.md,
    thirty-sixth session): in either runtime their probabilities are the mean of the network's on the prepared input
    and on its mirror (mirrored back). The mirror is taken after the preprocessing, whose CLAHE tiles are not
    mirror-symmetric."""
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.uniform(0, 255, (256, 256)), 3).astype(np.float32)
    for name in ("infection-crops", "lesions-crops"):
        net, info = runtime.load(name, runtime=which)
        assert runtime.is_onnx(info) == (which == "onnx")
        assert info["card"]["test_time_mirror"] is True
        x = runtime.prepare_slices([img], [False], info)
        a = softmax(runtime.forward(net, info, x), axis=1)[0]
        b = softmax(runtime.forward(net, info, np.ascontiguousarray(x[..., ::-1])), axis=1)[0][..., ::-1]
        mirrored = runtime.predict_slices(net, info, [img], False, bf16=False)[0]
        assert mirrored.shape == (len(info["card"]["classes"]), 256, 256)
        assert np.allclose(mirrored, (a + b) / 2, atol=1e-4)
        plain = dict(info, card={**info["card"], "test_time_mirror": False})
        assert np.allclose(runtime.predict_slices(net, plain, [img], False, bf16=False)[0], a, atol=1e-4)
        assert not np.allclose(mirrored, a, atol=1e-3)  # the mirror changes something on this image
    for base in ("infection", "lesions", "lungs"):
        assert not runtime.load(base, runtime=which)[1]["card"].get("test_time_mirror")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A phantom's fullest lung slice as an 8-bit PNG, whole and cut to its lungs' box (2 px margin), with labels."""
    ph = make_phantom(seed=4, shape=(20, 128, 128), spacing=(5.0, 2.5, 2.5), lesion_burden=0.2)
    k = int(np.argmax((ph.lungs > 0).reshape(ph.ct.n_slices, -1).sum(1)))
    img = (apply_window(ph.ct.array[k], "lung") * 255).astype(np.uint8)
    ys, xs = np.nonzero(ph.lungs[k] > 0)
    box = np.s_[ys.min() - 2: ys.max() + 3, xs.min() - 2: xs.max() + 3]
    folder = tmp_path_factory.mktemp("crops")
    Image.fromarray(img).save(folder / "full.png")
    Image.fromarray(np.ascontiguousarray(img[box])).save(folder / "crop.png")
    lesions = ph.lesions[k].astype(np.uint8)
    return folder, {"full": lesions, "crop": np.ascontiguousarray(lesions[box])}


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_segment_reads_a_tight_crop_with_the_crop_model(images, tmp_path, capsys):
    folder, _ = images
    for task in ("infection", "lesions"):
        assert main(["segment", str(folder), "-o", str(tmp_path / task), "--task", task]) == 0
        err = capsys.readouterr().err
        assert "crop.png" in err and "full.png" not in err and f"'{task}-crops'" in err
        assert main(["segment", str(folder / "crop.png"), "-o", str(tmp_path / f"{task}-direct"), "--task", task,
                     "--model", f"{task}-crops"]) == 0
        assert np.array_equal(_png(tmp_path / task / "crop.png"), _png(tmp_path / f"{task}-direct" / "crop.png"))
        # --no-crop-model: the model itself, no note; a full slice is never routed
        assert main(["segment", str(folder), "-o", str(tmp_path / f"{task}-off"), "--task", task,
                     "--no-crop-model"]) == 0
        assert "cut tight" not in capsys.readouterr().err
        assert np.array_equal(_png(tmp_path / task / "full.png"), _png(tmp_path / f"{task}-off" / "full.png"))
        assert main(["segment", str(folder / "crop.png"), "-o", str(tmp_path / f"{task}-base"), "--task", task,
                     "--model", f"{task}", "--no-crop-model"]) == 0
        assert np.array_equal(_png(tmp_path / f"{task}-off" / "crop.png"), _png(tmp_path / f"{task}-base" / "crop.png"))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else float("nan")


def test_evaluate_reads_tight_crops_as_segment_does(images, tmp_path):
    """The shipped infection model with its crop version: `segment`'s masks scored with an independent Dice give the
    per-image Dice `evaluate` reports, and the same image is read by the crop model in both."""
    folder, labels = images
    assert main(["segment", str(folder), "-o", str(tmp_path / "seg"), "--task", "infection"]) == 0
    records = [{"id": n, "image": _png(folder / f"{n}.png"), "is_hu": False, "infection": (labels[n] > 0).astype(np.uint8)}
               for n in ("full", "crop")]
    res = evaluate(zoo.resolve_model_path("infection")[0], records, "infection", tmp_path / "eval",
                   crops_model="infection-crops")
    assert res["read_by_crops_model"] == ["crop"]
    for r, row in zip(records, res["per_image"], strict=True):
        ours = _dice(_png(tmp_path / "seg" / f"{r['id']}.png") > 0, r["infection"] > 0)
        assert ours == pytest.approx(row["dice_infection"], abs=1e-9), r["id"]
    plain = evaluate(zoo.resolve_model_path("infection")[0], records, "infection", tmp_path / "plain")
    assert "read_by_crops_model" not in plain


def test_analyze_reads_a_tight_crop_with_the_crop_models(images, tmp_path):
    folder, _ = images
    analyzer = Analyzer()
    note = crops_note("lesions-crops", "infection-crops")
    assert note in analyze(folder / "crop.png", tmp_path / "c", analyzer=analyzer).report["warnings"]
    assert note not in analyze(folder / "full.png", tmp_path / "f", analyzer=analyzer).report["warnings"]
    off = analyze(folder / "crop.png", tmp_path / "o", analyzer=Analyzer(crop_models=False))
    assert not any("cut tight" in w for w in off.report["warnings"])
    assert main(["analyze", str(folder / "crop.png"), "-o", str(tmp_path / "cli"), "--no-crop-model"]) == 0
    assert "cut tight" not in (tmp_path / "cli" / "report.json").read_text()



def test_a_crops_lesions_are_not_cut_to_its_lung_mask(images):
    """On a slice cut tight the lung network leaves much of the lesions outside its mask while the crop models find
    them (Inf-Net training crops: docs/BENCHMARKS.md, thirty-fifth session): their GGO and consolidation are kept
    wherever they lie; the base models' stay within 3 mm of the lungs. Shown with a lung mask cut to its top half."""
    folder, _ = images
    analyzer = Analyzer()
    ct = load_ct(folder / "crop.png")
    lungs = analyzer.segment_lungs(ct)
    half = lungs.copy()
    half[:, half.shape[1] // 2:] = 0
    near = ndimage.binary_dilation(half[0] > 0, iterations=4)  # 3 mm at the image's nominal 1 mm pixels, and more
    crops = analyzer._crop_versions()
    read = [analyzer.segment_lesions(ct, half, models=m)[0] for m in (crops, None)]
    as_crop, as_full = ((r == 1) | (r == 2) for r in read)
    assert (as_crop & ~near).any() and not (as_full & ~near).any()
    whole = analyzer.segment_lesions(ct, lungs, models=crops)[0]
    assert np.array_equal(whole[as_crop], read[0][as_crop])  # the same reading, only not cut
