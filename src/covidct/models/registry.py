"""One place that turns a model name plus keyword arguments into a 2-D network.

Segmentation models map (B, in_channels, H, W) to logits (B, out_channels, H, W), one channel per
class including background (softmax over channels). Classification models map (B, in_channels, H, W)
to logits (B, out_channels). A checkpoint stores the name and the kwargs, so any model can be
rebuilt without the training config (see :mod:`covidct.models.checkpoint`).

Size constraints: ``unet`` needs H and W divisible by the product of its strides (16 by default),
``basicunet``/``unetpp`` by 16; ``segnet`` accepts any size (unpooling restores the pre-pool size).
covidct resizes every slice to the model's input size (256) so this never bites in practice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from covidct.errors import ConfigError

TASK_KIND: dict[str, str] = {}  # model name -> "segmentation" | "classification"
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, kind: str = "segmentation") -> Callable:
    """Decorator registering ``fn(in_channels, out_channels, **kw) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = fn
        TASK_KIND[name] = kind
        return fn

    return deco


def list_models(kind: str | None = None) -> list[str]:
    """Registered model names (optionally only ``"segmentation"`` or ``"classification"`` ones)."""
    return sorted(n for n in _BUILDERS if kind is None or TASK_KIND[n] == kind)


def build_model(name: str, in_channels: int, out_channels: int, **kw) -> nn.Module:
    """Build a registered model; unknown names or bad kwargs raise :class:`ConfigError`."""
    if name not in _BUILDERS:
        raise ConfigError(f"model.name: unknown model {name!r} (known: {', '.join(list_models())})")
    try:
        return _BUILDERS[name](int(in_channels), int(out_channels), **kw)
    except TypeError as e:  # unexpected keyword -> a config problem, not a crash
        raise ConfigError(f"model.kwargs: {name}: {e}") from e


def _tuple(x) -> tuple:
    return tuple(x) if isinstance(x, list | tuple) else x


@register("unet")
def _unet(
    in_channels: int,
    out_channels: int,
    channels=(16, 32, 64, 128, 256),
    strides=(2, 2, 2, 2),
    num_res_units: int = 2,
    norm: str = "batch",
    dropout: float = 0.0,
) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=_tuple(channels),
        strides=_tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )


@register("basicunet")
def _basicunet(
    in_channels: int,
    out_channels: int,
    features=(16, 16, 32, 64, 128, 16),
    norm: str = "batch",
    dropout: float = 0.0,
    upsample: str = "deconv",
) -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        features=_tuple(features),
        norm=norm,
        dropout=dropout,
        upsample=upsample,
    )


class UNetPlusPlus(nn.Module):
    """MONAI ``BasicUNetPlusPlus`` with a tensor output.

    MONAI always returns a list. Here ``forward`` returns the final (deepest-decoder) logits, except
    in training mode with deep supervision, where it returns the list ``[final, x_0_3, x_0_2, x_0_1]``
    (all full resolution) so the loss can average over heads (:func:`covidct.train.losses.apply_loss`).
    """

    def __init__(self, in_channels: int, out_channels: int, features=(16, 16, 32, 64, 128, 16),
                 deep_supervision: bool = False, norm: str = "batch", dropout: float = 0.0,
                 upsample: str = "deconv") -> None:
        super().__init__()
        from monai.networks.nets import BasicUNetPlusPlus

        self.deep_supervision = bool(deep_supervision)
        self.net = BasicUNetPlusPlus(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            features=_tuple(features),
            deep_supervision=self.deep_supervision,
            norm=norm,
            dropout=dropout,
            upsample=upsample,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        outs = self.net(x)
        if self.deep_supervision and self.training:
            return list(reversed(outs))
        return outs[-1]


@register("unetpp")
def _unetpp(in_channels: int, out_channels: int, **kw) -> nn.Module:
    return UNetPlusPlus(in_channels, out_channels, **kw)


@register("segnet")
def _segnet(in_channels: int, out_channels: int, features=(32, 64, 128, 256), convs=(2, 2, 3, 3),
            dropout: float = 0.0) -> nn.Module:
    from covidct.models.segnet import SegNet

    return SegNet(in_channels, out_channels, _tuple(features), _tuple(convs), dropout)


# --- classification -----------------------------------------------------------------------------


@register("resnet50", kind="classification")
def _resnet50(in_channels: int, out_channels: int, conv1_t_stride: int = 2, conv1_t_size: int = 7,
              no_max_pool: bool = False, widen_factor: float = 1.0) -> nn.Module:
    from monai.networks.nets import resnet50

    return resnet50(
        spatial_dims=2,
        n_input_channels=in_channels,
        num_classes=out_channels,
        conv1_t_stride=conv1_t_stride,
        conv1_t_size=conv1_t_size,
        no_max_pool=no_max_pool,
        widen_factor=widen_factor,
    )


class CompactCNN(nn.Module):
    """Small slice classifier (seed 002 style): conv-BN-ReLU-maxpool stages, global pooling, linear.

    ``pool``: ``avg`` (global average) or ``max`` (global max). Max pooling makes the network a detector
    whose slice score is its strongest local response, so a small lesion in one corner of a slice is not
    averaged away by the healthy rest (multiple-instance reasoning: a slice is positive if any part is).
    ``convs``: convolutions per stage (1 keeps the original, shipped layout).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, features=(16, 32, 64, 128),
                 dropout: float = 0.3, pool: str = "avg", convs: int = 1) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        layers: list[nn.Module] = []
        cin = in_channels
        for f in features:
            for _ in range(max(1, int(convs))):
                layers += [nn.Conv2d(cin, f, 3, padding=1, bias=False), nn.BatchNorm2d(f), nn.ReLU(inplace=True)]
                cin = f
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        glob = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.head = nn.Sequential(glob, nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register("compact_cnn", kind="classification")
def _compact_cnn(in_channels: int, out_channels: int, features=(16, 32, 64, 128), dropout: float = 0.3,
                 pool: str = "avg", convs: int = 1) -> nn.Module:
    return CompactCNN(in_channels, out_channels, _tuple(features), dropout, pool, convs)


# --- 3-D segmentation (seeds 000/001: MONAI 3-D U-Net; BasicUNet of MONAI's COVID-19-20 baseline) ---

SPATIAL_DIMS: dict[str, int] = {}  # model name -> 3 for volumetric models (absent: 2-D)


@register("unet3d")
def _unet3d(in_channels: int, out_channels: int, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
            num_res_units: int = 2, norm: str = "batch", dropout: float = 0.0) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=_tuple(channels),
                strides=_tuple(strides), num_res_units=num_res_units, norm=norm, dropout=dropout)


@register("basicunet3d")
def _basicunet3d(in_channels: int, out_channels: int, features=(32, 32, 64, 128, 256, 32), norm: str = "instance",
                 dropout: float = 0.1, upsample: str = "deconv") -> nn.Module:
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, features=_tuple(features),
                     norm=norm, dropout=dropout, upsample=upsample)


SPATIAL_DIMS.update({"unet3d": 3, "basicunet3d": 3})
