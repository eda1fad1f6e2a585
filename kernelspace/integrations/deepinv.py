"""The kernel-space blur as a deepinv forward operator, and a generator of its kernels.

:class:`KernelSpacePhysics` is the measurement y = N(F(x, k)) of deepinv's ``Physics``: F is a kernel-space
model's blur operator (:meth:`~kernelspace.models.KernelSpaceModel.apply_kernel`: the published ``BKSNet`` or
the default model), the latent kernel k is the operator's parameter (set like a ``Blur``'s filter:
``physics(x, kernel=k)``, ``physics.update(kernel=k)`` or ``physics.update(**generator.step(batch))``), and the
noise model N is any deepinv noise model. F is differentiable and non-linear, so deepinv's solvers that need only
the forward and its vector-Jacobian product (gradient descent on an ``L2`` data fidelity, diffusion posterior
sampling) run on it, started from y (see :meth:`KernelSpacePhysics.A_adjoint`).

:class:`KernelSpaceGenerator` draws k as deepinv's blur generators draw their filters:
``generator.step(batch_size, seed=None)`` returns ``{"kernel": k}``, from the model's prior or from a pool of real
kernels (from :meth:`~kernelspace.models.KernelSpaceModel.extract_kernel`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..synthesis import ModelLike
from . import as_model, require

dinv = require("deepinv", "deepinv")

__all__ = ["KernelSpaceGenerator", "KernelSpacePhysics"]


class KernelSpacePhysics(dinv.physics.Physics):
    """y = N(F(x, k)): blur by a kernel-space model with the latent kernel k, then noise.

    Args:
        model: the kernel-space model (a :class:`~kernelspace.models.KernelSpaceModel`, or anything
            :func:`~kernelspace.load_model` accepts; ``None``: the default model). It is a submodule: ``.to(device)``
            moves it with the kernel.
        kernel: the initial ``(B, C, h, w)`` or ``(1, C, h, w)`` latent kernel (``None``: give one before the first
            measurement); a kernel made for another image size is resized to the image's grid.
        noise_model: a deepinv noise model (``None``: no noise), e.g. ``deepinv.physics.GaussianNoise(0.01)``.
        **kwargs: passed to ``deepinv.physics.Physics`` (``sensor_model``, ``max_iter``, ``tol``).

    Images are ``(B, 3, H, W)`` (or ``(B, 1, H, W)``) float tensors. F is the model's ``apply_kernel`` on [0, 1];
    values outside (a solver's iterates, a noisy measurement) add their excess over [0, 1] unblurred.

    Example:
        >>> import deepinv as dinv
        >>> import torch
        >>> from kernelspace.models import KernelField
        >>> model = KernelField(cell=32, psf_size=7)
        >>> k = KernelSpaceGenerator(model, img_size=(32, 48)).step(2, seed=0)["kernel"]
        >>> physics = KernelSpacePhysics(model, kernel=k, noise_model=dinv.physics.GaussianNoise(0.01))
        >>> x = torch.rand(2, 3, 32, 48)
        >>> y = physics(x)
        >>> tuple(y.shape), bool(torch.allclose(physics.A(x), model.apply_kernel(x, k)))
        ((2, 3, 32, 48), True)
    """

    def __init__(
        self,
        model: ModelLike = None,
        kernel: torch.Tensor | None = None,
        noise_model: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(noise_model=noise_model, **kwargs)
        self.model = as_model(model, device="cpu")
        self.register_buffer("kernel", None)
        self.update_parameters(kernel=kernel)

    def update_parameters(self, kernel: torch.Tensor | None = None, **kwargs: Any) -> None:
        """Set the latent kernel (``None`` keeps the current one); other keys are ignored, as deepinv does."""
        if kernel is None:
            return
        if not isinstance(kernel, torch.Tensor) or kernel.ndim != 4 or kernel.shape[1] != self.model.kernel_channels:
            shape = tuple(kernel.shape) if isinstance(kernel, torch.Tensor) else type(kernel).__name__
            raise ValueError(
                f"kernel must be a (B, {self.model.kernel_channels}, h, w) latent kernel of "
                f"{type(self.model).__name__} (from extract_kernel, sample_kernel or KernelSpaceGenerator), got {shape}"
            )
        # The model's device, the kernel's dtype and autograd history: a kernel being estimated stays differentiable.
        self.kernel = kernel.to(self.model.device)

    def A(self, x: torch.Tensor, kernel: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """F(x, k), noiseless; a ``kernel`` given here becomes the operator's kernel."""
        self.update_parameters(kernel=kernel)
        if self.kernel is None:
            raise ValueError(
                "KernelSpacePhysics has no kernel yet: pass kernel= (here, to the constructor or to update), "
                "e.g. physics.update(**KernelSpaceGenerator(model, img_size=(H, W)).step(batch_size))"
            )
        # F is the model's on [0, 1], where images live; solvers' iterates and noisy measurements step outside it.
        # There the excess passes through unblurred: F stays continuous, and its gradient still pulls such pixels
        # back (clamping alone would freeze them).
        inside = x.clamp(0.0, 1.0)
        return self.model.apply_kernel(inside, self.kernel) + (x - inside)

    def A_adjoint(self, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The measurement itself: F is non-linear and has no adjoint, but deepinv starts its solvers (and
        ``A_dagger``) from ``A_adjoint(y)``, and for a blur the blurry image is the natural start. Gradients never
        use it: deepinv differentiates non-linear physics through ``A_vjp`` (autograd)."""
        return y


class KernelSpaceGenerator(dinv.physics.generator.PhysicsGenerator):
    """Random latent kernels for :class:`KernelSpacePhysics`, drawn like deepinv's blur generators draw filters.

    Args:
        model: the kernel-space model (as for :class:`KernelSpacePhysics`; use the physics' own, ``physics.model``).
        img_size: ``(H, W)`` of the images the kernels are for (they fix the kernel grid).
        kernels: ``None`` to draw from the model's prior (models with one: the default model, ``BKSNet`` with its
            VAE head), or a ``(N, C, h, w)`` pool of real kernels (from ``extract_kernel``) to draw from uniformly.
        rng: a ``torch.Generator`` on ``device`` (``None``: a new one); ``step(seed=s)`` reseeds it.
        device: where the kernels are made.

    Example:
        >>> from kernelspace.models import KernelField
        >>> generator = KernelSpaceGenerator(KernelField(cell=32, psf_size=7), img_size=(64, 96))
        >>> params = generator.step(batch_size=4, seed=0)
        >>> list(params), tuple(params["kernel"].shape)
        (['kernel'], (4, 50, 2, 3))
        >>> torch.equal(generator.step(4, seed=0)["kernel"], params["kernel"])
        True
    """

    def __init__(
        self,
        model: ModelLike = None,
        img_size: tuple[int, int] = (256, 256),
        kernels: torch.Tensor | None = None,
        rng: torch.Generator | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(rng=rng, device=device)
        self.model = as_model(model, device=device)
        if (
            not isinstance(img_size, (tuple, list))
            or len(img_size) != 2
            or not all(isinstance(s, int) and s > 0 for s in img_size)
        ):
            raise ValueError(f"img_size must be (height, width), two positive integers, got {img_size!r}")
        self.img_size = tuple(img_size)
        if kernels is None:
            if not self.model.has_prior:
                raise ValueError(
                    f"{type(self.model).__name__} has no prior to draw kernels from; give kernels= (a pool of "
                    "extract_kernel results), or use a model with a prior"
                )
            self.pool = None
        else:
            channels = self.model.kernel_channels
            if not isinstance(kernels, torch.Tensor) or kernels.ndim != 4 or kernels.shape[1] != channels:
                raise ValueError(
                    f"kernels must be a (N, {channels}, h, w) tensor of latent kernels, "
                    f"got {tuple(kernels.shape) if isinstance(kernels, torch.Tensor) else type(kernels).__name__}"
                )
            self.pool = self.model.resize_kernel(kernels.detach().to(self.model.device), *self.img_size)

    def step(self, batch_size: int = 1, seed: int | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{"kernel": (batch_size, C, h, w)}``: new kernels; the same ``seed`` gives the same kernels."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.rng_manual_seed(seed)
        if self.pool is None:
            kernel = self.model.sample_kernel(*self.img_size, batch=batch_size, generator=self.rng)
        else:
            index = torch.randint(0, len(self.pool), (batch_size,), generator=self.rng, device=self.rng.device)
            kernel = self.pool[index.to(self.pool.device)]
        return {"kernel": kernel}
