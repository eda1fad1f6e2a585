"""The paper's blind deblurring by optimisation through the blur operator F (Tran et al. 2021, Sec. 4.2).

Minimise over the sharp image ``x`` and the kernel latent ``z`` (``k`` decoded from it)

    Charbonnier(F(x, k), y)  +  kernel_weight * mean(z^2)  +  prior_weight * mean(|grad x|^alpha)

with Adam, where F is the model's :meth:`~kernelspace.models.KernelSpaceModel.apply_kernel` (any model: the
network of the paper, :class:`~kernelspace.models.BKSNet`, or :class:`~kernelspace.models.KernelField`).
``x`` is either optimised directly (starting from ``y``) or re-parametrised by a deep image prior
(:class:`ImagePrior`, a U-Net fed with fixed noise, as in the paper). ``k`` is searched in the model's kernel
space: BKSNet's latent code ``k = z`` itself; for a KernelField with a learned space (``latent_dim > 0``) a latent field
decoded by ``decode_kernel``; otherwise the KernelField's local PSF taps (its response exponent stays fixed). With the image prior, two warm-ups
come first (as in the published code): the prior is fitted to reproduce ``y``, and the kernel latent to
reproduce the starting kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import charbonnier
from ..models import KernelSpaceModel

__all__ = ["ImagePrior", "hyper_laplacian", "deblur_by_gradient"]


class ImagePrior(nn.Module):
    """A deep image prior: a small U-Net with skip connections mapping fixed noise to an image in [0, 1].

    Args:
        channels: output channels.
        width: feature channels at the finest level (doubled once at the coarser levels).
        depth: number of down-sampling levels; inputs are padded to multiples of ``2 ** depth`` internally.
        noise_channels: channels of the input noise.

    Example:
        >>> import torch
        >>> prior = ImagePrior(width=8, depth=2)
        >>> noise = prior.noise(30, 41, generator=torch.Generator().manual_seed(0))
        >>> tuple(prior(noise).shape)
        (1, 3, 30, 41)
    """

    def __init__(self, channels: int = 3, width: int = 32, depth: int = 4, noise_channels: int = 8) -> None:
        super().__init__()
        self.depth, self.noise_channels = depth, noise_channels
        act = nn.LeakyReLU(0.2)
        widths = [width] + [2 * width] * (depth - 1)
        self.down, self.skip, self.up = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        previous = noise_channels
        for w in widths:
            self.skip.append(nn.Sequential(nn.Conv2d(previous, 4, 1), act))
            self.down.append(nn.Sequential(nn.Conv2d(previous, w, 3, 2, 1), act, nn.Conv2d(w, w, 3, 1, 1), act))
            previous = w
        for level, w in enumerate(widths):
            below = widths[level + 1] if level + 1 < depth else w
            self.up.append(nn.Sequential(nn.Conv2d(below + 4, w, 3, 1, 1), act, nn.Conv2d(w, w, 1), act))
        self.head = nn.Conv2d(widths[0], channels, 1)

    def noise(self, height: int, width: int, *, generator: torch.Generator) -> torch.Tensor:
        """The fixed input: uniform noise scaled by 0.1 (as in DIP), ``(1, noise_channels, height, width)``."""
        return 0.1 * torch.rand(1, self.noise_channels, height, width, generator=generator)

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        height, width = noise.shape[-2:]
        m = 2**self.depth
        x = F.pad(noise, (0, -width % m, 0, -height % m), mode="reflect")
        skips = []
        for down, skip in zip(self.down, self.skip):
            skips.append(skip(x))
            x = down(x)
        for level in reversed(range(self.depth)):
            x = F.interpolate(x, size=skips[level].shape[-2:], mode="bilinear", align_corners=False)
            x = self.up[level](torch.cat([x, skips[level]], 1))
        return torch.sigmoid(self.head(x))[..., :height, :width]


def hyper_laplacian(x: torch.Tensor, alpha: float = 0.66, eps: float = 1e-3) -> torch.Tensor:
    """Mean of ``|grad x|^alpha`` over both directions (smoothed at 0 so that its gradient stays finite).

    Example:
        >>> import torch
        >>> flat, noisy = torch.zeros(1, 1, 8, 8), torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> hyper_laplacian(flat).item() < hyper_laplacian(noisy).item()
        True
    """
    dx, dy = x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]
    return (dx.square() + eps * eps).pow(alpha / 2).mean() + (dy.square() + eps * eps).pow(alpha / 2).mean()


def _kernel_space(model: KernelSpaceModel, start: torch.Tensor, gamma: float):
    """(latent to optimise, latent -> kernel) for the model's kernel space, starting at the kernel ``start``."""
    if getattr(model, "kernel_vae", None) is not None:
        with torch.no_grad():
            latent = model.encode_kernel(start)
        return latent, lambda z: model.decode_kernel(z, gamma)
    if hasattr(model, "pack"):
        # A KernelField without a learned space: its PSF taps; the last channel (the response) stays fixed.
        response = start[:, -1:].detach()
        return start[:, :-1].detach().clone(), lambda taps: torch.cat([taps, response], 1)
    return start.detach().clone(), lambda k: k


def deblur_by_gradient(
    model: KernelSpaceModel,
    blurry: torch.Tensor,
    start_kernel: torch.Tensor,
    *,
    gamma: float = 2.2,
    image_prior: bool = True,
    iterations: int = 5000,
    x_warmup: int = 300,
    k_warmup: int = 300,
    x_lr: float = 1e-3,
    k_lr: float = 1e-3,
    kernel_weight: float = 1e-4,
    prior_weight: float = 2e-3,
    alpha: float = 0.66,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sharp image and kernel behind ``blurry`` by Adam through ``model.apply_kernel`` (see the module).

    Args:
        model: any kernel-space model; its weights are not changed.
        blurry: (1, 3, H, W) encoded values in [0, 1], on the model's device.
        start_kernel: the kernel to start from, in the model's format (for instance "no blur").
        gamma: the response exponent a KernelField's decoded kernels carry.
        image_prior: re-parametrise ``x`` by an :class:`ImagePrior` (the paper) instead of optimising its pixels.
        iterations: joint optimisation steps (the paper: 5000).
        x_warmup: steps fitting the image prior to ``blurry`` first (the paper: 300; image prior only).
        k_warmup: steps fitting the kernel latent to ``start_kernel`` first (the paper: 300; image prior only).
        x_lr: Adam's learning rate for the image (prior weights or pixels).
        k_lr: Adam's learning rate for the kernel latent.
        kernel_weight: weight of the L2 penalty on the kernel latent.
        prior_weight: weight of the hyper-Laplacian prior on the image's gradients.
        alpha: the prior's exponent.
        seed: seeds the image prior's weights and noise.
        progress: called after every step (warm-ups included).

    Returns:
        (sharp image (1, 3, H, W) in [0, 1], kernel in the model's format), both detached.
    """
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # only x and k are optimised; no gradient buffers for the model's weights
    try:
        generator = torch.Generator().manual_seed(seed)
        latent, decode = _kernel_space(model, start_kernel, gamma)
        latent.requires_grad_(True)
        if image_prior:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                net = ImagePrior(blurry.shape[1]).to(blurry.device)
            noise = net.noise(*blurry.shape[-2:], generator=generator).to(blurry.device)
            image = lambda: net(noise)  # noqa: E731 - the image is whatever the prior outputs
            x_params = list(net.parameters())
        else:
            pixels = blurry.detach().clone().requires_grad_(True)
            image = lambda: pixels.clamp(0, 1)  # noqa: E731
            x_params = [pixels]
        x_opt, k_opt = torch.optim.Adam(x_params, lr=x_lr), torch.optim.Adam([latent], lr=k_lr)

        def step(loss: torch.Tensor, *optimizers: torch.optim.Optimizer) -> None:
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
            if progress is not None:
                progress()

        if image_prior:
            for _ in range(x_warmup):
                step(F.mse_loss(image(), blurry), x_opt)
            target = start_kernel.detach()
            for _ in range(k_warmup):
                step(F.mse_loss(decode(latent), target), k_opt)
        for _ in range(iterations):
            x, kernel = image(), decode(latent)
            loss = charbonnier(model.apply_kernel(x, kernel), blurry)
            step(loss + kernel_weight * latent.square().mean() + prior_weight * hyper_laplacian(x, alpha), x_opt, k_opt)
        with torch.no_grad():
            return image().detach(), decode(latent).detach()
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
