"""Model registry, SegNet shapes, checkpoint round trip and model-card verification."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from covidct.errors import ConfigError, ModelError
from covidct.models import build_model, list_models, load_model, save_checkpoint, verify_card, write_card
from covidct.models.inference import predict_slices, probabilities_to_labels

SMALL = {
    "unet": {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1},
    "basicunet": {"features": (4, 4, 8, 8, 16, 4)},
    "unetpp": {"features": (4, 4, 8, 8, 16, 4), "deep_supervision": True},
    "segnet": {"features": (4, 8, 16), "convs": (2, 2, 3)},
    "compact_cnn": {"features": (4, 8)},
    "resnet50": {},
}


def test_registry_lists_all():
    assert set(SMALL) <= set(list_models())  # 3-D and other entries may be registered too
    assert set(list_models("classification")) == {"resnet50", "compact_cnn"}


@pytest.mark.parametrize("name", ["unet", "basicunet", "unetpp", "segnet"])
def test_segmentation_models_map_shape(name):
    torch.manual_seed(0)
    m = build_model(name, 1, 3, **SMALL[name]).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)


def test_unetpp_deep_supervision_list_in_training_only():
    m = build_model("unetpp", 1, 2, **SMALL["unetpp"]).train()
    out = m(torch.randn(2, 1, 32, 32))
    assert isinstance(out, list) and len(out) == 4 and all(o.shape == (2, 2, 32, 32) for o in out)
    assert isinstance(m.eval()(torch.randn(1, 1, 32, 32)), torch.Tensor)


def test_segnet_odd_sizes():
    m = build_model("segnet", 1, 2, **SMALL["segnet"]).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 1, 65, 63)).shape == (1, 2, 65, 63)


def test_classification_models():
    with torch.no_grad():
        assert build_model("compact_cnn", 1, 2, **SMALL["compact_cnn"]).eval()(torch.randn(2, 1, 64, 64)).shape == (2, 2)
        assert build_model("resnet50", 1, 3).eval()(torch.randn(1, 1, 64, 64)).shape == (1, 3)


def test_compact_cnn_max_pool_sees_a_small_spot():
    """With global max pooling the score of a slice is its strongest local response: a bright spot away from the
    borders moves the logits, and by the same amount wherever it lies."""
    torch.manual_seed(0)
    m = build_model("compact_cnn", 1, 2, features=(4, 8), pool="max", convs=2, dropout=0.0).eval()
    assert sum(isinstance(x, torch.nn.Conv2d) for x in m.features) == 4
    blank = torch.zeros(1, 1, 64, 64)
    a, b = blank.clone(), blank.clone()
    a[..., 20:24, 20:24] = 5.0
    b[..., 40:44, 36:40] = 5.0
    with torch.no_grad():
        base, la, lb = m(blank), m(a), m(b)
    assert not torch.allclose(la, base)
    assert torch.allclose(la, lb, atol=1e-5)  # translation-invariant detector
    with pytest.raises(ValueError, match="pool"):
        build_model("compact_cnn", 1, 2, pool="median")


def test_bad_model_name_or_kwarg():
    with pytest.raises(ConfigError, match="model.name"):
        build_model("vnet", 1, 2)
    with pytest.raises(ConfigError, match="model.kwargs"):
        build_model("segnet", 1, 2, widht=3)


def _save(tmp_path, fp16=False):
    torch.manual_seed(0)
    m = build_model("unet", 1, 2, **SMALL["unet"]).eval()
    path = save_checkpoint(tmp_path / "m.pt", m, name="unet", kwargs=SMALL["unet"], in_channels=1, out_channels=2,
                           task="infection", classes=["background", "infection"], input_size=(32, 32),
                           normalisation={"clahe_clip": None}, thresholds={"foreground": 0.4},
                           config={"x": 1}, metrics={"val": {"dice": 0.5}}, fp16=fp16)
    return m, path


def test_checkpoint_roundtrip_identical(tmp_path):
    m, path = _save(tmp_path)
    m2, info = load_model(path)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert info["task"] == "infection" and info["thresholds"]["foreground"] == 0.4
    assert info["model"]["kwargs"]["channels"] == [4, 8, 16] and "state_dict" not in info


def test_checkpoint_fp16_is_smaller_and_close(tmp_path):
    m, p32 = _save(tmp_path)
    (tmp_path / "h").mkdir()
    _, p16 = _save(tmp_path / "h", fp16=True)
    m16, _ = load_model(p16)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(m16(x).numpy(), m(x).numpy(), atol=5e-2)
    assert p16.stat().st_size < p32.stat().st_size


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        load_model(bad)


def test_card_verification(tmp_path):
    _, path = _save(tmp_path)
    card = write_card(tmp_path / "card.json", path, name="infection-unet", version="0.1", task="infection",
                      classes=["background", "infection"], split={"train": ["a"], "val": ["b"], "test": ["c"]},
                      training_time_s=1.0, metrics={"test": {"dice": 0.5}}, command="covidct train x.yaml")
    assert len(card["sha256"]) == 64 and json.loads((tmp_path / "card.json").read_text())["name"] == "infection-unet"
    assert verify_card(path, tmp_path / "card.json")["task"] == "infection"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match"):
        verify_card(path, tmp_path / "card.json")
    with pytest.raises(ModelError, match="card not found"):
        verify_card(path, tmp_path / "nocard.json")


def test_predict_slices_shapes_and_labels(tmp_path):
    _, path = _save(tmp_path)
    model, info = load_model(path)
    arr = np.random.default_rng(0).uniform(0, 255, (3, 40, 48)).astype(np.float32)
    p = predict_slices(model, info, arr, False, batch_size=2)
    assert p.shape == (3, 2, 40, 48) and np.allclose(p.sum(1), 1, atol=1e-5)
    hu = [np.full((20, 30), -800.0, np.float32), np.zeros((70, 50), np.float32)]
    q = predict_slices(model, info, hu, [True, True], bf16=True)
    assert [x.shape for x in q] == [(2, 20, 30), (2, 70, 50)]
    lab = probabilities_to_labels(p, 0.4)
    assert lab.shape == (3, 40, 48) and np.array_equal(lab, (p[:, 1] >= 0.4))


def test_optimise_for_cpu_keeps_outputs_and_leaves_the_model_alone():
    from covidct.models.inference import optimise_for_cpu

    torch.manual_seed(0)
    net = build_model("unet", 1, 2, channels=[4, 8, 16], strides=[2, 2], num_res_units=1, norm="batch")
    net.train()
    with torch.no_grad():  # non-trivial running statistics, as after training
        for _ in range(3):
            net(torch.randn(4, 1, 32, 32) * 2 + 1)
    net.eval()
    fast = optimise_for_cpu(net)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), net(x), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # folded away
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched


def test_save_atomic_keeps_the_previous_file_when_interrupted(tmp_path, monkeypatch):
    from covidct.models.checkpoint import save_atomic

    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)
    real_save = torch.save

    def interrupted(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
