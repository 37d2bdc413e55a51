"""SegNet (Badrinarayanan et al.), compact and configurable, as used in seed paper 004.

VGG-style encoder blocks (conv-BN-ReLU x2 or x3) each followed by a 2x2 max-pool that keeps its
indices; the decoder mirrors the encoder and upsamples with ``max_unpool2d`` at those indices
(no learned upsampling, no skip concatenation). Unpooling is given the encoder's pre-pool size,
so odd input sizes work (the last row/column dropped by flooring pooling is zero-filled, then
the decoder's convolutions fill it) and the output always has the input's spatial size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _block(cin: int, cout: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[_conv_bn_relu(cin if i == 0 else cout, cout) for i in range(n)])


class SegNet(nn.Module):
    """2-D SegNet. ``features[i]`` channels and ``convs[i]`` convolutions in encoder stage i.

    VGG16 is features (64, 128, 256, 512, 512), convs (2, 2, 3, 3, 3); the default is a CPU-sized
    depth-4 version.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256),
        convs: Sequence[int] = (2, 2, 3, 3),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(features) != len(convs) or not features:
            raise ValueError("SegNet: features and convs must be non-empty and of equal length")
        self.encoders = nn.ModuleList()
        cin = in_channels
        for f, n in zip(features, convs, strict=True):
            self.encoders.append(_block(cin, f, n))
            cin = f
        # decoder stage i mirrors encoder stage i: features[i] -> features[i-1] (or features[0] at the top)
        self.decoders = nn.ModuleList()
        for i in reversed(range(len(features))):
            cout = features[i - 1] if i > 0 else features[0]
            layers = [_conv_bn_relu(features[i], features[i]) for _ in range(convs[i] - 1)]
            layers.append(_conv_bn_relu(features[i], cout))
            self.decoders.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(features[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, sizes = [], []
        for enc in self.encoders:
            x = enc(x)
            sizes.append(x.shape[-2:])
            x, idx = F.max_pool2d(x, 2, 2, return_indices=True)
            indices.append(idx)
        x = self.dropout(x)
        for dec, idx, size in zip(self.decoders, reversed(indices), reversed(sizes), strict=True):
            x = F.max_unpool2d(x, idx, 2, 2, output_size=size)
            x = dec(x)
        return self.classifier(x)
