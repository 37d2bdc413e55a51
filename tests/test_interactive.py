"""Click-guided refinement: guidance encoding, click simulation, refine() mechanics, training, CLI contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from covidct.errors import CovidCTError, ModelError, UnsupportedInput
from covidct.interactive import Click, guidance_signal, parse_click, refine, refine_volume
from covidct.models.checkpoint import save_checkpoint
from covidct.models.registry import register
from covidct.train.clicks import corrupt_mask, next_click


class StubRefine(torch.nn.Module):
    """Foreground logit = k * (mask + positive guidance - negative guidance - 0.5): follows the clicks exactly."""

    def __init__(self, in_channels: int = 4, out_channels: int = 2) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = self.k * (x[:, 1:2] + (x[:, 2:3] > 0.3).float() - 2 * (x[:, 3:4] > 0.3).float() - 0.5)
        return torch.cat([-fg, fg], 1)


register("test_stub_refine")(lambda i, o: StubRefine(i, o))


@pytest.fixture(scope="module")
def stub_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("stub") / "stub.pt"
    save_checkpoint(path, StubRefine(), name="test_stub_refine", kwargs={}, in_channels=4, out_channels=2,
                    task="refine", classes=["background", "infection"], input_size=(64, 64),
                    normalisation={"clahe_clip": None}, thresholds={"foreground": 0.5}, extra={"sigma": 3.0})
    return str(path)


def _slice(h: int = 128, w: int = 96):
    """Display slice with two bright lesions; returns (image, true mask, lesion A centre, lesion B centre)."""
    yy, xx = np.mgrid[:h, :w]
    a = (yy - 40) ** 2 + (xx - 30) ** 2 <= 10**2
    b = (yy - 90) ** 2 + (xx - 65) ** 2 <= 9**2
    img = np.full((h, w), 60.0, np.float32) + np.random.default_rng(0).normal(0, 3, (h, w)).astype(np.float32)
    img[a | b] = 180
    return img, (a | b).astype(np.uint8), (30, 40), (65, 90)


def test_guidance_matches_monai_deepgrow():
    from monai.apps.deepgrow.transforms import AddGuidanceSignald

    g = guidance_signal((64, 64), [(10, 12), (14, 15)], [(50, 40)], 2.0)
    ref = AddGuidanceSignald(sigma=2, number_intensity_ch=0)(
        {"image": np.zeros((1, 64, 64), np.float32), "guidance": [[[10, 12], [14, 15]], [[50, 40], [-1, -1]]]})["image"]
    assert g.shape == (2, 64, 64)
    np.testing.assert_allclose(g, ref, atol=0.02)
    assert not guidance_signal((8, 8), [], [], 2.0).any()


def test_simulated_clicks_land_on_errors():
    rng = np.random.default_rng(0)
    lab = np.zeros((40, 40), np.uint8)
    lab[5:20, 5:20] = 1
    pos, (r, c) = next_click(lab, np.zeros_like(lab), rng)
    assert pos and lab[r, c]
    pred = lab.copy()
    pred[25:38, 25:38] = 1  # a false region larger than any miss
    pos, (r, c) = next_click(lab, pred, rng)
    assert not pos and pred[r, c] and not lab[r, c]
    assert next_click(lab, lab, rng) is None
    assert corrupt_mask(lab, rng).shape == lab.shape


def test_positive_click_grows_missed_lesion_and_negative_removes_false(stub_model):
    img, truth, (ax, ay), (bx, by) = _slice()
    mask = truth.copy()
    mask[(np.mgrid[:128, :96][0] - 90) ** 2 + (np.mgrid[:128, :96][1] - 65) ** 2 <= 81] = 0  # lesion B missed
    mask[100:112, 10:22] = 1  # a false region
    out = refine(img, mask, [Click(bx, by, True)], is_hu=False, model=stub_model)
    assert out.dtype == np.uint8 and out.shape == img.shape and set(np.unique(out)) <= {0, 1}
    assert out[by, bx] == 1 and out.sum() > mask.sum()
    assert out[ay, ax] == 1  # the rest of the mask is kept
    out2 = refine(img, out, [Click(bx, by, True), Click(16, 106, False)], is_hu=False, model=stub_model)
    assert out2[106, 16] == 0 and out2[100:112, 10:22].sum() < 0.2 * 144
    assert out2[by, bx] == 1 and out2[ay, ax] == 1
    # without a mask: the first click alone
    first = refine(img, None, [Click(ax, ay, True)], is_hu=False, model=stub_model)
    assert first[ay, ax] == 1 and first[by, bx] == 0
    # no clicks: the mask comes back unchanged
    np.testing.assert_array_equal(refine(img, mask, [], is_hu=False, model=stub_model), mask)


class ForgetfulRefine(torch.nn.Module):
    """Ignores the current mask: foreground only at positive guidance (a network that re-segments the slice)."""

    def __init__(self, in_channels: int = 4, out_channels: int = 2) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = self.k * ((x[:, 2:3] > 0.3).float() - 0.5)
        return torch.cat([-fg, fg], 1)


register("test_forgetful_refine")(lambda i, o: ForgetfulRefine(i, o))


def test_a_click_changes_the_mask_only_near_it(tmp_path):
    path = tmp_path / "forgetful.pt"
    save_checkpoint(path, ForgetfulRefine(), name="test_forgetful_refine", kwargs={}, in_channels=4, out_channels=2,
                    task="refine", classes=["background", "infection"], input_size=(64, 64),
                    normalisation={"clahe_clip": None}, thresholds={"foreground": 0.5}, extra={"sigma": 3.0})
    img, truth, (ax, ay), (bx, by) = _slice()
    a_only = truth.copy()
    a_only[70:, :] = 0  # lesion B missing from the mask
    out = refine(img, a_only, [Click(bx, by, True)], is_hu=False, model=str(path))
    assert out[by, bx] == 1  # the click is answered
    # lesion A, far from the click, is kept although the network's own output dropped it
    np.testing.assert_array_equal(out[:60], a_only[:60])
    # no prior: the network's answer as it is
    first = refine(img, None, [Click(bx, by, True)], is_hu=False, model=str(path))
    assert first[by, bx] == 1 and first[ay, ax] == 0


def test_refine_volume_and_bad_inputs(stub_model, tmp_path):
    img, truth, (ax, ay), _ = _slice()
    vol = np.stack([img, img, img])
    out = refine_volume(vol, None, [Click(ax, ay, True, z=1)], is_hu=False, model=stub_model)
    assert out.shape == vol.shape and out[1, ay, ax] == 1 and not out[0].any() and not out[2].any()
    with pytest.raises(CovidCTError, match="slice index"):
        refine_volume(vol, None, [Click(ax, ay, True)], is_hu=False, model=stub_model)
    with pytest.raises(CovidCTError, match="outside"):
        refine(img, None, [Click(500, 3, True)], is_hu=False, model=stub_model)
    with pytest.raises(UnsupportedInput, match="mask shape"):
        refine(img, truth[:10], [Click(3, 3, True)], is_hu=False, model=stub_model)
    with pytest.raises(UnsupportedInput):
        refine(vol, None, [Click(3, 3, True)], is_hu=False, model=stub_model)
    with pytest.raises(ModelError):
        refine(img, None, [Click(3, 3, True)], is_hu=False, model=str(tmp_path / "missing.pt"))
    assert parse_click("3, 4, neg") == Click(3, 4, False)
    for bad in ("3,4", "a,4,pos", "3,4,maybe"):
        with pytest.raises(CovidCTError):
            parse_click(bad)


def test_cli_contract(stub_model, tmp_path):
    from covidct.cli import main
    from covidct.io import read_label_png, save_label_png

    img, truth, (ax, ay), (bx, by) = _slice()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(tmp_path / "slice.png")
    mask = truth.copy()
    mask[80:100, 55:75] = 0
    save_label_png(mask, tmp_path / "mask.png")
    out = tmp_path / "out.png"
    rc = main(["refine", str(tmp_path / "slice.png"), "--mask", str(tmp_path / "mask.png"), "--click", f"{bx},{by},pos",
               "--click", "5,5,neg", "-o", str(out), "--model", stub_model])
    assert rc == 0
    lab = read_label_png(out)
    assert lab.shape == img.shape and set(np.unique(lab)) <= {0, 1} and lab[by, bx] == 1 and lab[ay, ax] == 1
    base = ["refine", str(tmp_path / "slice.png"), "-o", str(tmp_path / "o2.png"), "--model", stub_model]
    assert main([*base, "--click", "1,2"]) == 1  # malformed click
    assert main([*base, "--click", "1000,2,pos"]) == 1  # outside the image
    save_label_png(truth[:50], tmp_path / "small.png")
    assert main([*base, "--click", "1,2,pos", "--mask", str(tmp_path / "small.png")]) == 5
    assert main(base) == 64  # --click is required
    # a volume needs --slice; with it, a PNG of that slice comes out
    from covidct.io import save_ct_nifti
    from covidct.phantom import make_phantom

    ph = make_phantom((6, 48, 48), (5.0, 7.2, 7.2), seed=2)
    nii = save_ct_nifti(ph.ct, tmp_path / "vol.nii.gz")
    vbase = ["refine", str(nii), "--click", "20,20,pos", "--model", stub_model]
    assert main([*vbase, "-o", str(tmp_path / "v.png")]) == 5
    assert main([*vbase, "--slice", "3", "-o", str(tmp_path / "v.png")]) == 0
    assert read_label_png(tmp_path / "v.png").shape == ph.ct.shape[1:]
    assert main([*vbase, "--slice", "3", "-o", str(tmp_path / "v.nii.gz")]) == 0


def test_interactive_training_runs(tmp_path):
    from covidct.train import train

    recs = []
    for c in range(4):
        for k in range(3):
            img, lab, _, _ = _slice(64, 64)
            shift = 4 * k - 4  # lesions in slightly different places
            recs.append({"image": np.roll(img, shift, axis=1), "is_hu": False, "infection": np.roll(lab, shift, axis=1),
                         "case": f"c{c}", "id": f"c{c}-{k}", "group": f"c{c}", "meta": {}})
    cfg = {"kind": "interactive", "name": "tiny_refine",
           "data": {"sources": [{"name": "unused"}], "split": {"fractions": [0.5, 0.5, 0.0], "seed": 0}},
           "model": {"name": "unet", "kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0}},
           "optimizer": {"name": "adam", "lr": 0.01},
           "train": {"steps": 4, "batch_size": 2, "input_size": 32, "val_every": 2, "val_slices": 2},
           "clicks": {"sigma": 2, "max_rounds": 2}, "normalisation": {"clahe_clip": None},
           "output": {"run_dir": str(tmp_path / "r"), "tensorboard": False}}
    run = train(cfg, records=recs, verbose=False)
    assert (run / "best.pt").is_file() and (run / "card.json").is_file()
    img, _, (ax, ay), _ = _slice(64, 64)
    out = refine(img, None, [Click(ax, ay, True)], is_hu=False, model=str(run))
    assert out.shape == img.shape and out[ay, ax] == 1

    # The shipped form: a TorchScript trace beside the checkpoint, named in the card, loads without
    # rebuilding the network and gives the same output; a tampered trace is refused.
    import json

    from covidct.models import zoo
    from covidct.models.checkpoint import export_torchscript, sha256_file

    card_path = run / "card.json"
    card = json.loads(card_path.read_text())
    card["sha256"] = sha256_file(run / "best.pt")
    card["torchscript"] = export_torchscript(run / "best.pt", run / "best.ts")
    assert card["torchscript"]["input_shape"] == [1, 4, 32, 32]
    card_path.write_text(json.dumps(card))
    zoo._load_cached.cache_clear()  # refine() above cached the run before it had a trace
    scripted, info = zoo.load(str(run), scripted=True)
    plain, _ = zoo.load(str(run))
    assert isinstance(scripted, torch.jit.ScriptModule) and info["task"] == "refine"
    x = torch.rand(1, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(scripted(x), plain(x), atol=1e-5)
    (run / "best.ts").write_bytes(b"not a trace")
    zoo._load_cached.cache_clear()
    with pytest.raises(ModelError, match="does not match"):
        zoo.load(str(run), scripted=True)


def test_shipped_refine_model_honours_clicks():
    from covidct.models import zoo

    if not zoo.has_model("refine"):
        pytest.skip("no shipped refine model")
    img, truth, (ax, ay), (bx, by) = _slice(256, 256)
    out = refine(img, None, [Click(ax, ay, True)], is_hu=False)
    assert out.shape == img.shape and out[ay, ax] == 1
    out = refine(img, out, [Click(ax, ay, True), Click(200, 200, False)], is_hu=False)
    assert out[ay, ax] == 1 and out[200, 200] == 0


# --- 3-D: same API, whole volumes --------------------------------------------------------------------


def _volume(z: int = 16, h: int = 40, w: int = 40):
    """HU volume with two dense spheres in lung-like air; returns (volume, true mask, centre A, centre B)."""
    zz, yy, xx = np.mgrid[:z, :h, :w]
    a = (zz - 6) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 4**2
    b = (zz - 9) ** 2 + (yy - 28) ** 2 + (xx - 27) ** 2 <= 4**2
    vol = np.full((z, h, w), -850.0, np.float32) + np.random.default_rng(0).normal(0, 20, (z, h, w)).astype(np.float32)
    vol[a | b] = -400
    vol[:, :, :2] = 300.0  # a rib: the loaders recognise HU by air and bone-dense tissue
    return vol, (a | b).astype(np.uint8), (6, 12, 12), (9, 28, 27)


@pytest.fixture(scope="module")
def stub_model_3d(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("stub3d") / "stub3d.pt"
    save_checkpoint(path, StubRefine(), name="test_stub_refine", kwargs={}, in_channels=4, out_channels=2,
                    task="refine", classes=["background", "infection"], input_size=(16, 32, 32), normalisation={},
                    thresholds={"foreground": 0.5},
                    extra={"sigma": 2.0, "spatial_dims": 3, "hu_range": [-1000.0, 500.0]})
    return str(path)


def test_guidance_and_simulated_clicks_in_3d():
    from monai.apps.deepgrow.transforms import AddGuidanceSignald

    g = guidance_signal((12, 20, 20), [(3, 5, 6)], [(9, 14, 12), (8, 2, 2)], 2.0)
    ref = AddGuidanceSignald(sigma=2, number_intensity_ch=0)(
        {"image": np.zeros((1, 12, 20, 20), np.float32),
         "guidance": [[[3, 5, 6], [-1, -1, -1]], [[9, 14, 12], [8, 2, 2]]]})["image"]
    assert g.shape == (2, 12, 20, 20)
    np.testing.assert_allclose(g, ref, atol=0.02)
    _, truth, _, _ = _volume()
    rng = np.random.default_rng(0)
    pos, p = next_click(truth, np.zeros_like(truth), rng)
    assert pos and len(p) == 3 and truth[p]
    pred = truth.copy()
    pred[1:5, 30:38, 2:10] = 1  # a false box larger than any miss
    pos, p = next_click(truth, pred, rng)
    assert not pos and pred[p] and not truth[p]
    bad = corrupt_mask(truth, rng)
    assert bad.shape == truth.shape and bad.dtype == np.uint8


def test_refine_volume_with_a_3d_model(stub_model_3d):
    vol, truth, a, b = _volume()
    mask = truth.copy()
    mask[b[0] - 5: b[0] + 5, b[1] - 5: b[1] + 5, b[2] - 5: b[2] + 5] = 0  # lesion B missed
    mask[2:5, 30:35, 3:8] = 1  # a false region
    click_b = Click(b[2], b[1], True, z=b[0])
    out = refine_volume(vol, mask, [click_b], is_hu=True, model=stub_model_3d, spacing=(2.0, 2.0, 2.0))
    assert out.shape == vol.shape and out.dtype == np.uint8
    assert out[b] == 1 and out[b[0] - 1, b[1], b[2]] == 1 and out[b[0] + 1, b[1], b[2]] == 1  # grows in 3-D
    assert out[a] == 1 and out[2:5, 30:35, 3:8].all()  # the rest is kept
    out2 = refine_volume(vol, out, [click_b, Click(5, 32, False, z=3)], is_hu=True, model=stub_model_3d,
                         spacing=(2.0, 2.0, 2.0))
    assert not out2[2:5, 30:35, 3:8].any() and out2[b] == 1 and out2[a] == 1  # negative removes the false region
    first = refine_volume(vol, None, [Click(a[2], a[1], True, z=a[0])], is_hu=True, model=stub_model_3d)
    assert first[a] == 1 and first[b] == 0
    with pytest.raises(UnsupportedInput, match="3-D refinement model"):
        refine(vol[a[0]], None, [Click(3, 3, True)], is_hu=True, model=stub_model_3d)
    with pytest.raises(UnsupportedInput, match="HU"):
        refine_volume(vol, None, [Click(3, 3, True, z=1)], is_hu=False, model=stub_model_3d)
    with pytest.raises(CovidCTError, match="outside"):
        refine_volume(vol, None, [Click(300, 3, True, z=1)], is_hu=True, model=stub_model_3d)


def test_interactive_training_3d_runs(tmp_path):
    """The same ``kind: interactive`` config with a 3-D network trains on whole volumes; the run refines volumes
    through refine_volume and the CLI's --slice."""
    from covidct.cli import main
    from covidct.io import read_label_png, save_ct_nifti
    from covidct.train import train
    from covidct.volume import CT, affine_from_spacing

    recs = []
    for c in range(4):
        vol, truth, _, _ = _volume(14, 32, 32)  # padded to 16 x 32 x 32
        shift = 2 * c - 3
        recs.append({"image": np.roll(vol, shift, axis=2), "lesions": np.roll(truth, shift, axis=2),
                     "lungs": None, "spacing": (2.0, 2.0, 2.0), "case": f"v{c}", "id": f"v{c}", "group": f"v{c}",
                     "meta": {}})
    cfg = {"kind": "interactive", "name": "tiny_refine3d",
           "data": {"sources": [{"name": "unused"}], "split": {"fractions": [0.5, 0.5, 0.0], "seed": 0}},
           "model": {"name": "unet3d", "kwargs": {"channels": [4, 8], "strides": [2], "num_res_units": 0,
                                                  "norm": "instance"}},
           "optimizer": {"name": "adam", "lr": 0.01},
           "train": {"steps": 4, "batch_size": 2, "val_every": 2},
           "clicks": {"sigma": 1.5, "max_rounds": 2, "val_clicks": [1, 2]},
           "output": {"run_dir": str(tmp_path / "r3"), "tensorboard": False}}
    run = train(cfg, records=recs, verbose=False)
    card = __import__("json").loads((run / "card.json").read_text())
    assert card["data"]["n_volumes"] == {"train": 2, "val": 2}
    vol, _, a, _ = _volume(14, 32, 32)
    out = refine_volume(vol, None, [Click(a[2], a[1], True, z=a[0])], is_hu=True, model=str(run))
    assert out.shape == vol.shape and out[a] == 1
    ct = CT(array=vol, spacing=(2.0, 2.0, 2.0), affine=affine_from_spacing((2.0, 2.0, 2.0)), is_hu=True, kind="array")
    nii = save_ct_nifti(ct, tmp_path / "v.nii.gz")
    assert main(["refine", str(nii), "--slice", "6", "--click", "12,12,pos", "--model", str(run),
                 "-o", str(tmp_path / "o.png")]) == 0
    assert read_label_png(tmp_path / "o.png").shape == (32, 32)
