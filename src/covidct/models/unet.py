"""The registry's ``unet`` (MONAI's ``UNet``, 2-D) rebuilt from ``torch.nn`` alone, for loading trained weights.

Importing MONAI costs about a second (its package import loads every subpackage), which a one-shot
``covidct analyze`` or ``segment`` pays before its first slice. :func:`torch_unet` builds the same
modules under the same names and class names as ``monai.networks.nets.UNet`` (``repr`` and
``state_dict`` keys identical) and runs the same operations in the same order, so a checkpoint loads
into it unchanged and gives bit-identical outputs (``tests/test_models.py`` compares the two). It
covers the settings covidct's registry exposes with residual units (``num_res_units >= 1``) and
batch norm; anything else is built by MONAI as before. Training always builds MONAI's network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ADN(nn.Sequential):
    """Norm, dropout, activation (MONAI's default "NDA" order) with MONAI's defaults for batch norm and PReLU."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.add_module("N", nn.BatchNorm2d(channels))
        self.add_module("D", nn.Dropout(dropout))
        self.add_module("A", nn.PReLU())


class Convolution(nn.Sequential):
    """MONAI's ``Convolution``: a 3x3 (transposed) convolution with "same" padding, then :class:`ADN`."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float, *, transposed: bool = False,
                 conv_only: bool = False) -> None:
        super().__init__()
        if transposed:  # output_padding stride - 1: exactly twice the size for stride 2
            conv: nn.Module = nn.ConvTranspose2d(cin, cout, 3, stride=stride, padding=1, output_padding=stride - 1)
        else:
            conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
        self.add_module("conv", conv)
        if not conv_only:
            self.add_module("adn", ADN(cout, dropout))


class ResidualUnit(nn.Module):
    """MONAI's ``ResidualUnit``: ``subunits`` convolutions plus a (projected) shortcut, added."""

    def __init__(self, cin: int, cout: int, stride: int, subunits: int, dropout: float, *,
                 last_conv_only: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        subunits = max(1, subunits)
        for su in range(subunits):
            unit = Convolution(cin if su == 0 else cout, cout, stride if su == 0 else 1, dropout,
                               conv_only=last_conv_only and su == subunits - 1)
            self.conv.add_module(f"unit{su:d}", unit)
        self.residual: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:  # a 1x1 projection when only the channel count changes
            self.residual = nn.Conv2d(cin, cout, 3, stride, 1) if stride != 1 else nn.Conv2d(cin, cout, 1, stride, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.residual(x)
        cx = self.conv(x)
        return cx + res


class SkipConnection(nn.Module):
    """MONAI's ``SkipConnection`` in "cat" mode: the input and the submodule's output, stacked on channels."""

    def __init__(self, submodule: nn.Module) -> None:
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.submodule(x)
        return torch.cat([x, y], dim=1)


class UNet(nn.Module):
    """``monai.networks.nets.UNet(spatial_dims=2, ..., num_res_units >= 1, norm="batch")`` with the defaults
    covidct uses (3x3 kernels, PReLU, bias, "NDA")."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
                 num_res_units: int, dropout: float) -> None:
        super().__init__()

        def block(inc: int, outc: int, chans: Sequence[int], strs: Sequence[int], is_top: bool) -> nn.Module:
            c, s = chans[0], strs[0]
            if len(chans) > 2:
                sub, upc = block(c, c, chans[1:], strs[1:], False), c * 2
            else:  # the bottom layer: a stride-1 residual unit
                sub, upc = ResidualUnit(c, chans[1], 1, num_res_units, dropout), c + chans[1]
            down = ResidualUnit(inc, c, s, num_res_units, dropout)
            up = nn.Sequential(Convolution(upc, outc, s, dropout, transposed=True),
                               ResidualUnit(outc, outc, 1, 1, dropout, last_conv_only=is_top))
            return nn.Sequential(down, SkipConnection(sub), up)

        self.model = block(in_channels, out_channels, list(channels), list(strides), True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def torch_unet(in_channels: int, out_channels: int, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
               num_res_units: int = 2, norm: str = "batch", dropout: float = 0.0, **other) -> nn.Module | None:
    """The registry's ``unet`` with these settings (its defaults), or None where only MONAI builds it."""
    supported = (not other and str(norm).lower() == "batch" and int(num_res_units) >= 1 and len(channels) >= 2
                 and len(strides) == len(channels) - 1 and all(int(s) >= 1 for s in strides)
                 and isinstance(dropout, int | float))
    if not supported:
        return None
    return UNet(int(in_channels), int(out_channels), [int(c) for c in channels], [int(s) for s in strides],
                int(num_res_units), float(dropout))
