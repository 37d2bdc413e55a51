"""covidct explain --dream: the optimisation really raises the class output, is deterministic, and the
command writes its images or fails in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from covidct.cli import main
from covidct.explain import DreamSettings, dream, octave_sizes

FAST = DreamSettings(octaves=2, steps=12, jitter=2, time_limit_s=30.0)


def tiny_segmenter(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 2, 1)).eval()


def tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


@pytest.mark.parametrize("cls", [0, 1])
def test_dream_objective_rises_on_a_random_segmenter(cls):
    r = dream(tiny_segmenter(), cls, (32, 32), settings=FAST)
    assert r.steps_run == 24 and len(r.history) == 24 and not r.stopped_early
    assert r.final_score > r.initial_score
    assert np.mean(r.history[-4:]) > np.mean(r.history[:4])
    assert r.final_probability > r.initial_probability
    assert r.image.shape == (32, 32) and 0.0 <= r.image.min() and r.image.max() <= 1.0


def test_dream_works_for_a_classifier_and_from_a_start_image():
    start = torch.linspace(0, 1, 24 * 24).reshape(1, 1, 24, 24)
    r = dream(tiny_classifier(), 2, (32, 32), start=start, settings=FAST)
    assert r.final_score > r.initial_score
    assert r.image.shape == (32, 32)


def test_dream_is_deterministic_for_a_seed():
    net = tiny_segmenter()
    a = dream(net, 1, (32, 32), settings=FAST)
    b = dream(net, 1, (32, 32), settings=FAST)
    c = dream(net, 1, (32, 32), settings=DreamSettings(octaves=2, steps=12, jitter=2, seed=1))
    assert np.array_equal(a.image, b.image) and a.history == b.history
    assert not np.array_equal(a.image, c.image)


def test_time_limit_stops_a_class_early():
    r = dream(tiny_segmenter(), 1, (32, 32), settings=DreamSettings(steps=10_000, time_limit_s=0.3))
    assert r.stopped_early and 0 < r.steps_run < 30_000
    assert r.image.shape == (32, 32)


def test_octave_sizes_end_at_the_input_size():
    assert octave_sizes((256, 128), 3, 2.0) == [(64, 32), (128, 64), (256, 128)]


@pytest.fixture(scope="module")
def segnet_checkpoint(tmp_path_factory):
    from covidct.models.checkpoint import save_checkpoint
    from covidct.models.registry import build_model
    from covidct.preprocess import NormalisationConfig

    kw = {"features": [4, 8], "convs": [1, 1]}
    torch.manual_seed(0)
    net = build_model("segnet", 1, 2, **kw)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, net, name="segnet", kwargs=kw, in_channels=1, out_channels=2, task="infection",
                    classes=["background", "infection"], input_size=(32, 32),
                    normalisation=NormalisationConfig().as_dict())
    return path


def test_cli_writes_class_images_panel_and_summary(segnet_checkpoint, tmp_path, capsys):
    out = tmp_path / "dream"
    code = main(["explain", str(segnet_checkpoint.parent), "--dream", "-o", str(out), "--steps", "4",
                 "--octaves", "2", "--seed", "3"])
    assert code == 0, capsys.readouterr().err
    for name in ("dream_background.png", "dream_infection.png", "dream_panel.png", "dream.json"):
        assert (out / name).is_file()
    assert Image.open(out / "dream_infection.png").size == (32, 32)
    summary = json.loads((out / "dream.json").read_text())
    assert summary["kind"] == "segmentation" and summary["settings"]["seed"] == 3
    assert [c["class_name"] for c in summary["classes"]] == ["background", "infection"]
    assert all(c["steps_run"] == 8 for c in summary["classes"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_cli_from_a_slice_and_one_class(segnet_checkpoint, tmp_path, capsys):
    img = tmp_path / "slice.png"
    Image.fromarray((np.arange(40 * 48).reshape(40, 48) % 256).astype(np.uint8)).save(img)
    out = tmp_path / "d"
    code = main(["explain", str(segnet_checkpoint), "--dream", "-o", str(out), "--from", str(img),
                 "--class", "infection", "--steps", "2", "--octaves", "1"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "dream.json").read_text())
    assert summary["start"] == "slice.png" and len(summary["classes"]) == 1


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--steps", "2"], 8, "--dream"),  # no method chosen
    (["--dream", "--steps", "0"], 8, "--steps"),
    (["--dream", "--class", "tumour"], 8, "background, infection"),
    (["--dream", "--from", "/nonexistent/x.png"], 2, "x.png"),
    (["--dream", "--time-limit", "-1"], 8, "--time-limit"),
])
def test_cli_bad_inputs_fail_in_one_line(segnet_checkpoint, tmp_path, capsys, args, code, words):
    out = tmp_path / "o"
    assert main(["explain", str(segnet_checkpoint), "-o", str(out), *args]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("covidct: error:") and len(err.splitlines()) == 1 and words in err
    assert not out.exists() or not any(out.iterdir())


def test_cli_unknown_model(tmp_path, capsys):
    assert main(["explain", "no-such-model", "--dream", "-o", str(tmp_path / "o")]) == 7
    assert "unknown model" in capsys.readouterr().err


def test_cli_grid_run_folder_names_its_variants(segnet_checkpoint, tmp_path, capsys):
    import shutil

    grid = tmp_path / "grid"
    (grid / "segnet_lr-0.001").mkdir(parents=True)
    shutil.copy(segnet_checkpoint, grid / "segnet_lr-0.001" / "best.pt")
    assert main(["explain", str(grid), "--dream", "-o", str(tmp_path / "o")]) == 7
    assert "grid variants: segnet_lr-0.001" in capsys.readouterr().err
