"""The published network of "Explore Image Deblurring via Encoded Blur Kernel Space" (Tran et al., CVPR 2021).

A re-implementation whose parameter names equal the published ``KernelWizard`` state dict key for key, so the
released checkpoints (``GOPRO_woVAE.pth``, ``GOPRO_wVAE.pth``, ``REDS_woVAE.pth``, ``mix_woVAE.pth``) load
unchanged. Layers that hold no parameters (activations, padding, the "none" norms) sit at the same list
positions as in the published code because the positions are part of the parameter names.

Kernel layout: the latent kernel ``k`` has ``kernel_dim`` channels and one cell per 128x128 block of the
(padded) image, i.e. ``(B, kernel_dim, Hp / 128, Wp / 128)``; see :meth:`BKSNet.kernel_size_for`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..physics.response import from_linear, to_linear
from .base import KernelSpaceModel, Sensor, check_int
from .layers import ResidualBlock

__all__ = ["BKSNet"]


def _feature_extractor(nf: int, n_blocks: int) -> nn.Sequential:
    """Shared encoder of sharp and blurry images, output at 1/4 resolution."""
    return nn.Sequential(
        nn.Conv2d(3, nf, 3, 1, 1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(nf, nf, 3, 2, 1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(nf, nf, 3, 2, 1),
        nn.LeakyReLU(0.1),
        *[ResidualBlock(nf) for _ in range(n_blocks)],
    )


class _ReflectResBlock(nn.Module):
    """Kernel-extractor residual block (reflect padding, no bias, no norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # Indices 0..6 mirror the published ``conv_block`` so that weights sit at ``.1`` and ``.5``.
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            nn.Identity(),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=False),
            nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class _KernelExtractor(nn.Module):
    """G's trunk: features of (x, y) -> latent kernel at 1/32 of the feature resolution."""

    def __init__(self, nf: int, out_channels: int, n_blocks: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(2 * nf, nf, 7, bias=False),
            nn.Identity(),
            nn.ReLU(True),
        ]
        width = nf
        for _ in range(5):
            next_width = min(width * 2, out_channels)
            layers += [nn.Conv2d(width, next_width, 3, 2, 1, bias=False), nn.Identity(), nn.ReLU(True)]
            width = next_width
        layers += [_ReflectResBlock(out_channels) for _ in range(n_blocks)]
        self.model = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.model(features)


class _UNetLevel(nn.Module):
    """One level of the adapter U-Net; the innermost level receives the kernel."""

    def __init__(
        self, outer: int, inner: int, submodule: _UNetLevel | None, *, kernel_dim: int, outermost: bool = False
    ) -> None:
        super().__init__()
        self.outermost = outermost
        self.submodule = submodule
        down_conv = nn.Conv2d(outer, inner, 4, 2, 1, bias=False)
        self.down = nn.Sequential(down_conv) if outermost else nn.Sequential(nn.LeakyReLU(0.2), down_conv)
        up_in = inner + kernel_dim if submodule is None else 2 * inner
        if outermost:
            self.up = nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(up_in, outer, 4, 2, 1), nn.Tanh())
        else:
            self.up = nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(up_in, outer, 4, 2, 1, bias=False))

    def forward(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        h = self.down(x)
        h = torch.cat([h, kernel], 1) if self.submodule is None else self.submodule(h, kernel)
        h = self.up(h)
        # The published skip order is (up path, input); the parent's ReLU makes its in-place LeakyReLU moot.
        return h if self.outermost else torch.cat([h, x], 1)


class _Adapter(nn.Module):
    """Five-level U-Net that injects the kernel into the sharp image's features."""

    def __init__(self, nf: int, kernel_dim: int) -> None:
        super().__init__()
        level = _UNetLevel(8 * nf, 8 * nf, None, kernel_dim=kernel_dim)
        for outer, inner in ((4 * nf, 8 * nf), (2 * nf, 4 * nf), (nf, 2 * nf)):
            level = _UNetLevel(outer, inner, level, kernel_dim=kernel_dim)
        self.model = _UNetLevel(nf, nf, level, kernel_dim=kernel_dim, outermost=True)

    def forward(self, features: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        return self.model(features, kernel)


def _reconstruction(nf: int, n_blocks: int) -> nn.Sequential:
    """Decoder from adapted features (1/4 resolution) back to an RGB residual."""
    return nn.Sequential(
        *[ResidualBlock(nf) for _ in range(n_blocks)],
        nn.Conv2d(nf, 4 * nf, 3, 1, 1),
        nn.PixelShuffle(2),
        nn.LeakyReLU(0.1),
        nn.Conv2d(nf, 256, 3, 1, 1),
        nn.PixelShuffle(2),
        nn.LeakyReLU(0.1),
        nn.Conv2d(64, 64, 3, 1, 1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(64, 3, 3, 1, 1),
    )


class BKSNet(KernelSpaceModel, architecture="bks"):
    """The published blur-kernel-space network (``KernelWizard``), with or without its VAE head.

    G(x, y) -> k is :meth:`extract_kernel`; F(x, k) -> y is :meth:`apply_kernel`. The defaults are the released
    configuration (49,205,187 parameters; 115,265,475 with ``use_vae=True``). Images of any size are accepted:
    they are reflect-padded to sides that are multiples of 128 and at least 256, and the output is cropped
    back, so at sizes the published code accepts nothing is padded and the output is the published one.

    Args:
        nf: feature width.
        front_RBs: residual blocks of the shared feature extractor.
        back_RBs: residual blocks of the reconstruction trunk.
        kernel_dim: channels of the latent kernel; the released models use ``8 * nf``.
        n_blocks: residual blocks at the end of the kernel extractor.
        use_vae: whether G outputs a mean and a sigma (the ``GOPRO_wVAE`` model).

    Every argument is checked before anything is allocated: ``nf`` up to 256, ``front_RBs`` and ``back_RBs`` up
    to 100, ``kernel_dim`` up to 4096 and ``n_blocks`` up to 32 (four or five times the published sizes).

    Example:
        >>> import torch
        >>> net = BKSNet(nf=8, front_RBs=1, back_RBs=1, kernel_dim=64, n_blocks=1)
        >>> x = torch.rand(1, 3, 64, 80)
        >>> k = net.extract_kernel(x, x)
        >>> tuple(k.shape)  # 64x80 is padded to 256x256: a 2x2 grid of latent cells
        (1, 64, 2, 2)
        >>> tuple(net.apply_kernel(x, k).shape)
        (1, 3, 64, 80)
    """

    grid_multiple = 128
    min_side = 256

    def __init__(
        self,
        nf: int = 64,
        front_RBs: int = 10,  # noqa: N803 - the published configuration's names
        back_RBs: int = 20,  # noqa: N803
        kernel_dim: int = 512,
        n_blocks: int = 4,
        use_vae: bool = False,
    ) -> None:
        super().__init__()
        nf, kernel_dim = check_int("nf", nf, 1, 256), check_int("kernel_dim", kernel_dim, 1, 4096)
        front_RBs, back_RBs = check_int("front_RBs", front_RBs, 0, 100), check_int("back_RBs", back_RBs, 0, 100)  # noqa: N806
        n_blocks = check_int("n_blocks", n_blocks, 0, 32)
        if not isinstance(use_vae, bool):
            raise TypeError(f"use_vae must be true or false, got {use_vae!r}")
        self.nf, self.kernel_dim, self.use_vae = nf, kernel_dim, use_vae
        self.feature_extractor = _feature_extractor(nf, front_RBs)
        self.kernel_extractor = _KernelExtractor(nf, 2 * kernel_dim if use_vae else kernel_dim, n_blocks)
        self.adapter = _Adapter(nf, kernel_dim)
        self.recon_trunk = _reconstruction(nf, back_RBs)

    @property
    def kernel_channels(self) -> int:
        return self.kernel_dim

    @property
    def has_prior(self) -> bool:
        return self.use_vae

    def _kernel_from_pair(
        self, sharp: torch.Tensor, blurry: torch.Tensor, valid: tuple[int, int] | None = None, method: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = torch.cat([self.feature_extractor(sharp), self.feature_extractor(blurry)], 1)
        out = self.kernel_extractor(features)
        if self.use_vae:
            return out[:, : self.kernel_dim], out[:, self.kernel_dim :]
        return out, None

    def _blur_with_kernel(
        self, sharp: torch.Tensor, kernel: torch.Tensor, sensor: Sensor | None = None
    ) -> torch.Tensor:
        adapted = self.adapter(self.feature_extractor(sharp), kernel)
        blurry = self.recon_trunk(adapted) + sharp
        if sensor is None:
            return blurry
        # The network works on encoded values: the sensor gets them decoded with a typical camera's response.
        return from_linear(sensor(to_linear(blurry)).clamp(0, 1))

    def _sample_prior(self, batch: int, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        # The VAE head was trained towards a standard normal prior on each latent cell.
        return torch.randn(batch, self.kernel_dim, *grid, generator=generator, device=generator.device)

    @classmethod
    def config_from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict:
        """Infer the constructor arguments from a published (or our own) state dict's names and shapes."""
        try:
            nf = state_dict["feature_extractor.0.weight"].shape[0]
            kernel_in = state_dict["adapter.model.submodule.submodule.submodule.submodule.up.1.weight"].shape[0]
            g_out = state_dict["kernel_extractor.model.16.weight"].shape[0]
        except KeyError as err:
            raise ValueError(f"not a BKS (KernelWizard) state dict: missing {err.args[0]!r}") from None

        def count(prefix: str, suffix: str) -> int:
            return len({k.split(".")[1] for k in state_dict if k.startswith(prefix) and k.endswith(suffix)})

        kernel_dim = kernel_in - 8 * nf
        return {
            "nf": int(nf),
            "front_RBs": count("feature_extractor.", "conv1.weight"),
            "back_RBs": count("recon_trunk.", "conv1.weight"),
            "kernel_dim": int(kernel_dim),
            "n_blocks": len({k.split(".")[2] for k in state_dict if ".conv_block." in k}),
            "use_vae": bool(g_out == 2 * kernel_dim),
        }
