"""A variational autoencoder over local PSFs: the learned, compact kernel space of :class:`KernelField`.

Linear bases cannot express real camera shake (thin curved paths at random positions; see the design notes), so
the decoder is non-linear: a latent vector is decoded by upsample-then-convolve stages ending at full resolution
(no transposed convolutions, whose checkerboard texture would show in the blur), and a softmax over the taps makes
every decoded PSF non-negative and sum to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PSFAutoencoder"]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))


class PSFAutoencoder(nn.Module):
    """Encode ``(N, S, S)`` PSFs to ``latent_dim`` Gaussian latents and decode latents back to PSFs.

    Args:
        psf_size: side S of the PSFs.
        latent_dim: size of the latent vector.
        width: channels of the first (full-resolution) stage; deeper stages use 2x and 4x.

    Example:
        >>> import torch
        >>> vae = PSFAutoencoder(psf_size=15, latent_dim=8, width=4)
        >>> mu, logvar = vae.encode(torch.full((2, 15, 15), 1 / 225))
        >>> psf = vae.decode(mu)
        >>> tuple(psf.shape), bool(torch.allclose(psf.sum((1, 2)), torch.ones(2)))
        ((2, 15, 15), True)
    """

    def __init__(self, psf_size: int = 41, latent_dim: int = 64, width: int = 32) -> None:
        super().__init__()
        self.psf_size, self.latent_dim = psf_size, latent_dim
        self.sizes = [psf_size, (psf_size + 1) // 2, (psf_size + 3) // 4]  # e.g. 41, 21, 11
        w1, w2, w3 = width, 2 * width, 4 * width
        self.encoder = nn.Sequential(
            _conv(1, w1), _conv(w1, w2, 2), _conv(w2, w3, 2), _conv(w3, w3, 2), nn.Flatten(),
        )
        coarse = (self.sizes[2] + 1) // 2
        self.to_latent = nn.Linear(w3 * coarse * coarse, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim, w3 * self.sizes[2] ** 2)
        self.stage3 = nn.Sequential(nn.LeakyReLU(0.2, inplace=True), _conv(w3, w3))
        self.stage2 = nn.Sequential(_conv(w3, w2), _conv(w2, w2))
        self.stage1 = nn.Sequential(_conv(w2, w1), _conv(w1, w1), nn.Conv2d(w1, 1, 3, 1, 1))

    def encode(self, psf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, S, S)`` PSFs -> the posterior's mean and log-variance, each ``(N, latent_dim)``."""
        # Scaling by the tap count keeps the input near unit size whatever S is (a flat PSF becomes all ones).
        h = self.encoder(psf[:, None] * psf.shape[-1] ** 2)
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        return mu, logvar.clamp(-12, 6)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` latents -> ``(N, S, S)`` PSFs, non-negative and summing to one."""
        s1, s2, s3 = self.sizes
        h = self.stage3(self.from_latent(z).view(z.shape[0], -1, s3, s3))
        h = self.stage2(F.interpolate(h, size=(s2, s2), mode="bilinear", align_corners=False))
        logits = self.stage1(F.interpolate(h, size=(s1, s1), mode="bilinear", align_corners=False))
        return logits.flatten(1).softmax(1).view(-1, s1, s1)

    def forward(self, psf: torch.Tensor, generator: torch.Generator | None = None):
        """Reparametrised pass for training: ``(decoded PSFs, KL divergence per sample)``."""
        mu, logvar = self.encode(psf)
        # Drawn where the generator lives (the trainer's are CPU generators), then moved: any device reproduces.
        where = generator.device if generator is not None else mu.device
        eps = torch.randn(mu.shape, generator=generator, device=where, dtype=mu.dtype).to(mu.device)
        z = mu + (0.5 * logvar).exp() * eps
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)
        return self.decode(z), kl
