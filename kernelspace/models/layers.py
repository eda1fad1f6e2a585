"""Building blocks shared by the kernel-space networks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResidualBlock"]


class ResidualBlock(nn.Module):
    """``x + conv2(relu(conv1(x)))`` with 3x3 convolutions and biases (EDVR's block without batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))
