"""The learned extractor: a network that maps a (sharp, blurry) pair to its PSF field in one pass.

The paper's G is such an encoder, trained jointly with F. Here F is physics, so the encoder is trained alone,
through F (:meth:`~kernelspace.models.KernelField.training_loss` with ``objective="extractor"``), and its
estimate can start a few steps of the least-squares solver
(:func:`~kernelspace.physics.kernel_estimation.fast_psf_field`), which then does the fine work.

The network reads the pair's channel means (the blur is the same in every channel) and their horizontal and
vertical differences (where blur shows), scaled by the sharp image's gradient spread so that contrast does not
matter, at full resolution. It halves the resolution ``log2(cell)`` times, to one feature vector per cell; two
convolutions on that grid let a cell see its neighbours (a flat cell takes its neighbours' blur), and a 1x1
convolution gives each cell's PSF logits (softmax: non-negative, summing to one) and logits over the candidate
camera responses (averaged over cells; trained, but :class:`~kernelspace.models.KernelField` chooses the
response by fit, which proved more reliable). Leaky ReLUs with variance-preserving initialisation keep the deep,
narrow stack trainable (plain ReLUs died in it).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

__all__ = ["KernelEncoder"]


class KernelEncoder(nn.Module):
    """(sharp, blurry) -> (PSF field (B, H/cell, W/cell, S, S), response logits (B, responses)).

    Args:
        cell: pixels per PSF cell, a power of two.
        psf_size: S, the (odd) side of each PSF.
        responses: how many candidate camera responses the logits score.
        width: channels of the first two layers (they double every second halving, up to 6x).

    Example:
        >>> import torch
        >>> net = KernelEncoder(cell=32, psf_size=9, responses=2, width=4)
        >>> psf, logits = net(torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96))
        >>> tuple(psf.shape), tuple(logits.shape), bool(torch.allclose(psf.sum((-2, -1)), torch.ones(2, 2, 3)))
        ((2, 2, 3, 9, 9), (2, 2), True)
    """

    def __init__(self, cell: int = 128, psf_size: int = 41, responses: int = 2, width: int = 16) -> None:
        super().__init__()
        halvings = round(math.log2(cell))
        if 2**halvings != cell:
            raise ValueError(f"KernelEncoder: cell must be a power of two, got {cell}")
        self.cell, self.psf_size, self.responses = cell, psf_size, responses
        channels = [min(width * 2 ** (i // 2), 6 * width) for i in range(halvings + 1)]
        convs = [nn.Conv2d(6, channels[0], 3, padding=1)]
        convs += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1) for c_in, c_out in itertools.pairwise(channels)]
        top = channels[-1]
        # On the cell grid: neighbours share what they see.
        convs += [nn.Conv2d(top, top, 3, padding=1, padding_mode="replicate") for _ in range(2)]
        layers: list[nn.Module] = []
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, a=0.2, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.LeakyReLU(0.2, inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(top, psf_size * psf_size + responses, 1)
        # Start from a centred Gaussian PSF (sigma 2 px) and no preferred response: a sane blur before training.
        r = torch.arange(psf_size, dtype=torch.float32) - psf_size // 2
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[: psf_size * psf_size] = -(r[:, None] ** 2 + r[None, :] ** 2).flatten() / 8

    def forward(self, sharp: torch.Tensor, blurry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``sharp``, ``blurry``: (B, C, H, W) encoded values, sides multiples of ``cell``."""
        b, _, height, width = sharp.shape
        if height % self.cell or width % self.cell:
            raise ValueError(f"KernelEncoder: image sides ({height}, {width}) must be multiples of the cell "
                             f"{self.cell}")
        x, y = sharp.mean(1, keepdim=True), blurry.mean(1, keepdim=True)
        dx, dy = _differences(x), _differences(y)
        scale = dx.flatten(1).std(1).clamp_min(1e-3).view(-1, 1, 1, 1)
        out = self.head(self.features(torch.cat([x, y, dx / scale, dy / scale], 1)))
        s = self.psf_size
        taps = out[:, : s * s].permute(0, 2, 3, 1).softmax(-1)
        psf = taps.reshape(b, height // self.cell, width // self.cell, s, s)
        return psf, out[:, s * s :].mean((2, 3))


def _differences(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 2, H, W): horizontal and vertical forward differences, zero on the last column/row."""
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    dy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return torch.cat([dx, dy], 1)
