"""The CIFAR ResNet-18 / ResNet-34 of the paper's Appendix B (Table 5), with the heads of
`MultiHeadNet`.

The CIFAR variant of He et al.'s ImageNet ResNet, as CIFAR training code writes it: a 3x3 stride-1
stem without max-pooling, then four stages of post-activation BasicBlocks, 64-128-256-512 channels
(strides 1, 2, 2, 2), global average pooling and a linear head. Key names follow torchvision's
ResNet (`conv1, bn1, layerS.N.{conv1, bn1, conv2, bn2, downsample.0, downsample.1}, fc`), so
weights map onto it key for key (its stem conv is 7x7 there, 3x3 here).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.arch import RESNET_BLOCKS, RESNET_WIDTH
from engine.models.heads import CIFAR10_MEAN, CIFAR10_STD, MultiHeadNet


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the shortcut, then ReLU; the shortcut is a 1x1 conv + BN
    where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet(MultiHeadNet):
    """CIFAR ResNet-depth: shared trunk `features` (512 features), primary head `fc`, auxiliary
    heads `aux_fc[i]`."""

    def __init__(
        self,
        depth: int = 18,
        num_classes: int = 10,
        aux_classes: Sequence[int] = (),
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ):
        super().__init__()
        if depth not in RESNET_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
        self.depth = depth
        self._add_normalization(mean, std)
        self.conv1 = nn.Conv2d(3, RESNET_WIDTH, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(RESNET_WIDTH)
        in_planes = RESNET_WIDTH
        for stage, blocks in enumerate(RESNET_BLOCKS[depth]):
            planes, stride = RESNET_WIDTH * 2**stage, 1 if stage == 0 else 2
            layer = nn.Sequential(*[BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                                    for i in range(blocks)])
            self.add_module(f"layer{stage + 1}", layer)
            in_planes = planes
        self._add_heads(in_planes, num_classes, aux_classes)
        self._init_weights()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 512) pooled features."""
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)
