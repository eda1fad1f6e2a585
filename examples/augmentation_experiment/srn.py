"""A CPU-sized SRN-Deblur network (Tao et al., CVPR 2018): coarse-to-fine over 3 scales with shared weights.

Each scale runs the same encoder-decoder (three levels, residual blocks, skip connections added) on the blurry
image at that scale concatenated with the previous, coarser estimate upsampled (the blurry image itself at the
coarsest scale). Unlike SRN there is no ConvLSTM at the bottleneck, and each scale predicts a residual added to
its blurry input, which lets a short training start from the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernelspace.metrics import charbonnier

__all__ = ["SRNDeblur", "multiscale_loss"]


class ResBlock(nn.Module):
    """conv-ReLU-conv plus the input (SRN's "ResBlock", without normalisation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRNDeblur(nn.Module):
    """Scale-recurrent deblurring network; :meth:`forward` returns the estimates from coarsest to finest.

    Args:
        width: channels at full resolution (doubled at each of the two lower levels).
        blocks: residual blocks per level, in the encoder and again in the decoder.
        scales: number of scales (each half the size of the next).

    Example:
        >>> import torch
        >>> net = SRNDeblur(width=8, blocks=1)
        >>> [tuple(o.shape) for o in net(torch.rand(1, 3, 37, 50))]
        [(1, 3, 9, 12), (1, 3, 18, 25), (1, 3, 37, 50)]
    """

    def __init__(self, width: int = 16, blocks: int = 1, scales: int = 3) -> None:
        super().__init__()
        if scales < 1 or width < 1 or blocks < 1:
            raise ValueError(f"width, blocks and scales must be positive, got {width}, {blocks}, {scales}")
        self.scales = scales
        c1, c2, c3 = width, 2 * width, 4 * width

        def stage(channels: int) -> nn.Sequential:
            return nn.Sequential(*(ResBlock(channels) for _ in range(blocks)))

        self.inp = nn.Sequential(nn.Conv2d(6, c1, 5, padding=2), nn.ReLU(inplace=True))
        self.enc1, self.enc2, self.enc3 = stage(c1), stage(c2), stage(c3)
        self.down1 = nn.Sequential(nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.down2 = nn.Sequential(nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.dec3, self.dec2, self.dec1 = stage(c3), stage(c2), stage(c1)
        self.up2 = nn.Sequential(nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1), nn.ReLU(inplace=True))
        self.up1 = nn.Sequential(nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(c1, 3, 5, padding=2)

    def _step(self, blurry: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        h, w = blurry.shape[-2:]
        # Two stride-2 levels: pad to multiples of 4 (reflect, or replicate for tiny coarse scales), crop back.
        pad = (0, -w % 4, 0, -h % 4)
        x = torch.cat([blurry, previous], 1)
        if any(pad):
            x = F.pad(x, pad, mode="reflect" if min(h, w) > 4 else "replicate")
        e1 = self.enc1(self.inp(x))
        e2 = self.enc2(self.down1(e1))
        d2 = self.dec3(self.enc3(self.down2(e2)))
        d1 = self.dec2(self.up2(d2) + e2)
        residual = self.out(self.dec1(self.up1(d1) + e1))
        return blurry + residual[..., :h, :w]

    def forward(self, blurry: torch.Tensor) -> list[torch.Tensor]:
        """Deblur a ``(B, 3, H, W)`` batch in [0, 1]; returns ``scales`` estimates, the last at full size."""
        if blurry.ndim != 4 or blurry.shape[1] != 3:
            raise ValueError(f"blurry must be a (B, 3, H, W) tensor, got shape {tuple(blurry.shape)}")
        pyramid = [blurry]
        for _ in range(self.scales - 1):
            pyramid.insert(0, F.interpolate(pyramid[0], scale_factor=0.5, mode="bilinear", antialias=True))
        outputs, estimate = [], pyramid[0]
        for level in pyramid:
            if estimate.shape[-2:] != level.shape[-2:]:
                estimate = F.interpolate(estimate, size=level.shape[-2:], mode="bilinear", align_corners=False)
            estimate = self._step(level, estimate)
            outputs.append(estimate)
        return outputs

    @torch.no_grad()
    def deblur(self, blurry: torch.Tensor) -> torch.Tensor:
        """The full-size estimate alone, clipped to [0, 1] (for evaluation)."""
        return self(blurry)[-1].clamp(0, 1)


def multiscale_loss(outputs: list[torch.Tensor], sharp: torch.Tensor) -> torch.Tensor:
    """SRN's loss: the mean over scales of the Charbonnier distance to the sharp image resized to each scale.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 16, 16)
        >>> multiscale_loss(SRNDeblur(width=4)(x), x).item() > 0
        True
    """
    targets = [sharp]
    for _ in outputs[:-1]:  # the same pyramid as the network's input
        targets.insert(0, F.interpolate(targets[0], scale_factor=0.5, mode="bilinear", antialias=True))
    return torch.stack([charbonnier(out, target) for out, target in zip(outputs, targets)]).mean()
