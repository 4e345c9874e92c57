"""WideResNet-D-K with a primary head and one head per auxiliary dataset.

Key names follow the TRADES / RobustBench WideResNet (`conv1`, `block1.layer.N.{bn1, conv1, bn2,
conv2, convShortcut}`, `bn1`, `fc`) so weights move between tools. The model takes float inputs
in [0, 1] and normalises with buffers inside, which is what attack libraries expect.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.models.heads import CIFAR10_MEAN, CIFAR10_STD, MultiHeadNet


class BasicBlock(nn.Module):
    """Pre-activation residual block; the shortcut is a 1x1 conv when the shape changes."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        # As in the reference WRN: when the shape changes, the shortcut sees the activated input.
        shortcut = x if self.equal_in_out else self.convShortcut(o)
        out = self.relu2(self.bn2(self.conv1(o)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, n_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(n_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(MultiHeadNet):
    """WRN-depth-width: shared trunk `features`, primary head `fc`, auxiliary heads `aux_fc[i]`
    (`MultiHeadNet`)."""

    def __init__(
        self,
        depth: int = 28,
        width: int = 10,
        num_classes: int = 10,
        aux_classes: Sequence[int] = (),
        drop_rate: float = 0.0,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n+4 and at least 10, got {depth}")
        if width < 1:
            raise ValueError(f"WideResNet width must be >= 1, got {width}")
        n = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.depth, self.width, self.drop_rate = depth, width, drop_rate
        self._add_normalization(mean, std)
        self.conv1 = nn.Conv2d(3, channels[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self._add_heads(channels[3], num_classes, aux_classes)
        self._init_weights()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 64*width) pooled features."""
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
