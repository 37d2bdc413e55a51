"""covidct.models.unet: MONAI's UNet rebuilt from torch.nn (no MONAI import) must be the same network."""

from __future__ import annotations

import pytest
import torch

from covidct.models import build_model, load_model, save_checkpoint
from covidct.models.inference import optimise_for_cpu
from covidct.models.unet import torch_unet

CONFIGS = [
    {},  # the registry's defaults (the shipped lungs / infection / lesions models)
    {"channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1},
    {"channels": (8, 16, 32, 64), "strides": (2, 2, 1), "num_res_units": 3, "dropout": 0.1},
    {"channels": (4, 8), "strides": (2,)},
]


def _randomised(model: torch.nn.Module) -> dict:
    """A state dict with random weights and batch-norm statistics (so that the comparison is not trivial)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = torch.randn(v.shape, generator=g) * 0.2
            v = v.abs() + 0.5 if k.endswith("running_var") else v
        sd[k] = v
    return sd


@pytest.mark.parametrize("cfg", CONFIGS)
def test_torch_unet_is_monai_unet(cfg):
    monai_net = build_model("unet", 1, 3, **cfg).eval()
    ours = torch_unet(1, 3, **cfg)
    assert repr(ours) == repr(monai_net)  # same modules, names and class names
    sd = _randomised(monai_net)
    monai_net.load_state_dict(sd)
    ours.load_state_dict(sd)  # strict: the same state-dict keys
    ours.eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), monai_net(x))
        a, b = optimise_for_cpu(ours), optimise_for_cpu(monai_net)  # analyze's path: folded, bf16
        xc = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(a(xc), b(xc))


def test_torch_unet_declines_other_settings():
    assert torch_unet(1, 2, norm="instance") is None
    assert torch_unet(1, 2, num_res_units=0) is None
    assert torch_unet(1, 2, channels=(4, 8, 16), strides=(2, 2, 2)) is None  # MONAI warns and drops a stride


def test_load_model_uses_torch_unet(tmp_path):
    net = build_model("unet", 1, 2, **CONFIGS[1]).eval()
    net.load_state_dict(_randomised(net))
    path = tmp_path / "m.pt"
    save_checkpoint(path, net, name="unet", kwargs=CONFIGS[1], in_channels=1, out_channels=2, task="lungs",
                    classes=["background", "lung"], input_size=(32, 32), normalisation={})
    loaded, _ = load_model(path)
    assert type(loaded).__module__ == "covidct.models.unet"
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
