"""ONNX export and the ONNX Runtime inference path agree with the torch path they replace."""

from __future__ import annotations

import json

import numpy as np
import pytest

from covidct.models import onnx_runtime as ox
from covidct.models.zoo import WEIGHTS_DIR


@pytest.mark.parametrize("shape", [(512, 512), (300, 410), (200, 180), (256, 256)])
def test_resize_image_matches_torch(shape):
    torch = pytest.importorskip("torch")
    from covidct.preprocess import resize_image_tensor

    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    ref = resize_image_tensor(torch.from_numpy(x)[:, None], (256, 256))[:, 0].numpy()
    np.testing.assert_allclose(ox.resize_image(x, (256, 256)), ref, atol=2e-6)


def test_resize_probabilities_matches_torch():
    torch = pytest.importorskip("torch")
    from covidct.models.inference import _resize_back

    p = ox.softmax(np.random.default_rng(1).normal(size=(1, 4, 256, 256)).astype(np.float32))[0]
    for shape in ((512, 512), (333, 200)):
        ref = _resize_back(torch.from_numpy(p), shape).numpy()
        np.testing.assert_allclose(ox.resize_probabilities(p, shape), ref, atol=5e-5)  # OpenCV vs torch rounding


def test_exported_checkpoint_predicts_like_torch(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    from covidct.models.checkpoint import save_checkpoint
    from covidct.models.inference import predict_slices
    from covidct.models.onnx_export import export_onnx
    from covidct.models.registry import build_model

    torch.manual_seed(0)
    kwargs = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "norm": "batch"}
    net = build_model("unet", 1, 3, **kwargs)
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    ckpt = save_checkpoint(tmp_path / "m.pt", net, name="unet", kwargs=kwargs, in_channels=1, out_channels=3,
                           task="lesions", classes=["background", "a", "b"], input_size=(64, 64),
                           normalisation={"window": "papers", "percentiles": [0.5, 99.5], "clahe_clip": 7.0,
                                          "clahe_tiles": 8}, thresholds={"foreground": 0.5})
    entry = export_onnx(ckpt, tmp_path / "m.onnx")
    assert entry["opset"] == 18 and entry["sha256"] == ox.sha256_file(tmp_path / "m.onnx")
    onnx_net, info = ox.load_onnx(tmp_path / "m.onnx", entry["sha256"])
    assert info["task"] == "lesions" and info["input_size"] == [64, 64] and info["classes"][2] == "b"
    rng = np.random.default_rng(2)
    images = [rng.normal(-600, 300, size=s).astype(np.float32) for s in ((96, 96), (50, 70), (64, 64))]
    ref = predict_slices(net, info, images, True)
    got = ox.predict_slices(onnx_net, info, images, True)
    for a, b in zip(ref, got, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4)
    with pytest.raises(Exception, match="sha256"):
        ox.load_onnx(tmp_path / "m.onnx", "0" * 64)


@pytest.mark.parametrize("card_path", sorted(WEIGHTS_DIR.glob("*.card.json")), ids=lambda p: p.name.split(".")[0])
def test_every_shipped_model_has_a_matching_onnx_file(card_path):
    card = json.loads(card_path.read_text())
    entry = card.get("onnx")
    assert entry, f"{card_path.name} has no onnx entry (scripts/export_onnx.py)"
    net, info = ox.load_onnx(WEIGHTS_DIR / entry["file"], entry["sha256"])
    assert entry["opset"] >= 17
    assert info["task"] == card["task"] and info["classes"] == card["classes"]
    x = np.zeros((2, int(info["model"]["in_channels"]), *info["input_size"]), np.float32)
    assert net(x).shape[:2] == (2, len(card["classes"]))


def test_area_resize_matches_torch_both_ways():
    torch = pytest.importorskip("torch")

    x = (np.random.default_rng(3).random((300, 120)) > 0.5).astype(np.float32)
    for size in ((160, 160), (256, 100)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=size, mode="area")[0, 0].numpy()
        np.testing.assert_allclose(ox.area_resize(x, size), ref, atol=2e-6)
