"""KernelField: a CPU-sized kernel space where physics does what physics knows.

The kernel ``k`` is a field of local PSFs plus the camera response, on a grid of ``cell`` x ``cell`` pixels:
``k`` has ``psf_size**2 + 1`` channels; channels ``[0, S*S)`` are the taps of the cell's PSF (row-major, the
cross-correlation convention of :mod:`kernelspace.physics.psf`) and the last channel is the exponent ``gamma``
of the camera response (the same in every cell).

- F(x, k) (:meth:`apply_kernel`): decode the image to linear light (``x ** gamma``), blur it with the PSF field
  blended bilinearly between cell centres (:mod:`kernelspace.physics.eff`), clip at 1 (saturation) and encode
  again. Each PSF is made non-negative and normalised to sum to one before use, so every ``k`` is a physically
  valid blur and F is differentiable in x and k. F gives the expected blurry image; sensor noise enters through
  ``apply_kernel(..., sensor=)``, between the blur and clipping.
- G(x, y) (:meth:`extract_kernel`): the non-negative least-squares PSF field on image gradients. The default
  ``extractor="fast"``: on the pair's channel mean in linear light (the blur is the same in every channel), the
  pooled (uniform) fit of every candidate response exponent picks the exponent that explains ``y`` best; then
  each cell is fitted on its own window (:func:`kernelspace.physics.kernel_estimation.fast_psf_field`) and three
  corrections on the coupled problem (exact gradient, the cells' own normal matrices as its curvature) fix what
  fitting cells apart left. ``extractor="solve"`` (or ``extract_kernel(..., method="solve")``): the coupled
  solver alone, coarse to fine on every channel: on the half-size pair, one estimate per exponent, the best one's
  upsampled field starting the full-size estimate; 10x slower at 256x256 and 100x on 1280x720 frames, no closer
  on Levin or GoPro.
- The prior (:meth:`sample_kernel`): ``prior="trajectory"`` draws random camera shake (Boracchi & Foi style
  trajectories) with an in-plane rotation, which makes the blur vary across the image; ``prior="latent"`` draws
  from the learned kernel space: a VAE over local PSFs (:class:`~kernelspace.models.psf_vae.PSFAutoencoder`,
  present when ``latent_dim > 0``), trained by ``kernelspace train`` with the Charbonnier re-blur loss
  (:meth:`training_loss`). Each image gets a latent drawn from the fitted latent distribution, varied smoothly
  across its cells. :meth:`encode_kernel` / :meth:`decode_kernel` move between PSF fields and latent fields.

Geometry: an image is padded (reflect) to multiples of ``cell`` (at least one cell); ``k`` has one cell per
``cell`` pixels of the padded image. Moving ``k`` to an image of another size resizes it bilinearly, which blends
neighbouring PSFs (a convex combination of PSFs is still a PSF).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..metrics import charbonnier
from ..physics.blur import psf_blur
from ..physics.eff import space_varying_blur
from ..physics.kernel_estimation import cell_normal_equations, estimate_psf_field, fast_psf_field, pooled_psf
from ..physics.psf import fit_canvas, rasterize_psf, shake_trajectory
from .base import KernelSpaceModel, Sensor, check_int, check_number
from .kernel_encoder import KernelEncoder
from .psf_vae import PSFAutoencoder

__all__ = ["KernelField"]

_DARK = 1e-6  # floor before the response's inverse power: keeps its slope finite at black


def _linear(encoded: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    """Encoded values -> linear light (``x ** gamma``); in place on the fresh clamp when no gradient is needed."""
    out = encoded.clamp_min(_DARK)
    return out**gamma if out.requires_grad else _power_(out, gamma)


def _encoded(linear: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    """Linear light -> encoded values, clipped at the sensor's white (1)."""
    out = linear.clamp(_DARK, 1.0)
    return out ** (1.0 / gamma) if out.requires_grad else _power_(out, 1.0 / gamma)


def _power_(positive: torch.Tensor, exponent: torch.Tensor | float) -> torch.Tensor:
    """``positive ** exponent`` in place, as ``exp(exponent * log(.))``: 2.5x faster than ``pow_`` on the CPU
    (measured on a 16x3x256x256 batch), where it is a third of the augmentation's time."""
    return positive.log_().mul_(exponent).exp_()


class KernelField(KernelSpaceModel, architecture="kernel-field"):
    """A kernel space of local PSFs in linear light: fast FFT blur, least-squares kernel extraction.

    Args:
        cell: pixels per kernel cell (the PSF field's resolution).
        psf_size: side S (odd) of each local PSF; blur longer than S pixels is out of reach.
        gammas: candidate camera-response exponents G chooses from (1.0 = linear data, 2.2 = a typical camera).
        iterations: FISTA iterations of each half-size kernel estimate (one per response exponent).
        refine_iterations: FISTA iterations of the full-size estimate that refines the best half-size one.
        tikhonov: weight of the PSF's squared norm, relative to the data term's largest eigenvalue.
        prior_max_extent: longest camera-shake extent (pixels) that :meth:`sample_kernel` draws.
        prior_max_rotation: largest in-plane rotation (degrees) over the exposure that it draws.
        latent_dim: size of the learned kernel space's latent (0: no VAE, nothing to train).
        vae_width: channels of the VAE's first stage.
        prior: ``"trajectory"`` (camera shake, needs no training) or ``"latent"`` (the trained VAE).
        latent_variation: with the latent prior, how far (in latent standard deviations) a cell's latent strays
            from its image's: 0 gives uniform blur.
        extractor: how :meth:`extract_kernel` computes G by default: ``"fast"``, ``"solve"`` or ``"learned"``
            (module docstring).
        fast_iterations: FISTA iterations of each cell-by-cell solve of the fast extractor.
        fast_steps: corrections of the fast extractor's field on the coupled problem (each one blur and its
            adjoint; :func:`~kernelspace.physics.kernel_estimation.fast_psf_field`).
        encoder_width: channels of the first layer of the learned extractor
            (:class:`~kernelspace.models.kernel_encoder.KernelEncoder`; ``cell`` a power of two); 0: none.
        learned_steps: corrections on the coupled problem that follow the learned extractor's estimate (0: the
            network's estimate as it is).

    Example:
        >>> import torch
        >>> model = KernelField(cell=64, psf_size=9)
        >>> x = torch.rand(1, 3, 70, 90)
        >>> k = model.sample_kernel(70, 90, seed=0)
        >>> tuple(k.shape)  # 70x90 is padded to 128x128: a 2x2 grid of 9*9 taps + gamma
        (1, 82, 2, 2)
        >>> tuple(model.apply_kernel(x, k).shape)
        (1, 3, 70, 90)
    """

    extraction_methods = ("fast", "solve", "learned")
    training_objectives = ("prior", "extractor")

    def __init__(
        self,
        cell: int = 128,
        psf_size: int = 41,
        gammas: list[float] | None = None,
        iterations: int = 150,
        refine_iterations: int = 60,
        tikhonov: float = 1e-4,
        prior_max_extent: float = 31.0,
        prior_max_rotation: float = 2.0,
        latent_dim: int = 0,
        vae_width: int = 32,
        prior: str = "trajectory",
        latent_variation: float = 0.3,
        extractor: str = "fast",
        fast_iterations: int = 50,
        fast_steps: int = 3,
        encoder_width: int = 0,
        learned_steps: int = 3,
    ) -> None:
        super().__init__()
        # Checked before anything is allocated: a config.json from elsewhere can ask for any size.
        if check_int("psf_size", psf_size, 1, 255) % 2 == 0:
            raise ValueError(f"psf_size must be a positive odd number, got {psf_size}")
        if check_int("cell", cell, 8, 4096) % 2:
            raise ValueError(f"cell must be an even number >= 8, got {cell}")
        if gammas is not None and (not isinstance(gammas, (list, tuple)) or not 1 <= len(gammas) <= 16):
            raise TypeError(f"gammas must be a list of 1 to 16 exponents (or null), got {gammas!r}")
        self.cell, self.psf_size = cell, psf_size
        self.gammas = [check_number("gammas", g, 0.0, 10.0, above=True) for g in (gammas or [1.0, 2.2])]
        self.iterations = check_int("iterations", iterations, 1, 100_000)
        self.refine_iterations = check_int("refine_iterations", refine_iterations, 0, 100_000)
        self.tikhonov = check_number("tikhonov", tikhonov, 0.0, 1e6)
        self.prior_max_extent = check_number("prior_max_extent", prior_max_extent, 0.0, 1e4, above=True)
        self.prior_max_rotation = check_number("prior_max_rotation", prior_max_rotation, 0.0, 180.0)
        check_int("latent_dim", latent_dim, 0, 1024)
        check_int("vae_width", vae_width, 1, 512)
        check_number("latent_variation", latent_variation, 0.0, 100.0)
        if prior not in ("trajectory", "latent") or (prior == "latent" and latent_dim < 1):
            raise ValueError(f"prior must be 'trajectory', or 'latent' with latent_dim > 0; got {prior!r} with latent_dim={latent_dim}")
        self.prior, self.latent_variation = prior, latent_variation
        if extractor not in self.extraction_methods:
            raise ValueError(f"extractor must be one of {', '.join(map(repr, self.extraction_methods))}, got {extractor!r}")
        self.extractor = extractor
        self.fast_iterations = check_int("fast_iterations", fast_iterations, 1, 100_000)
        self.fast_steps = check_int("fast_steps", fast_steps, 0, 1000)
        self.learned_steps = check_int("learned_steps", learned_steps, 0, 1000)
        if check_int("encoder_width", encoder_width, 0, 256) and cell & (cell - 1):
            raise ValueError(f"a learned extractor (encoder_width > 0) needs a cell that is a power of two, got {cell}")
        if extractor == "learned" and not encoder_width:
            raise ValueError("extractor 'learned' needs a learned extractor: give encoder_width > 0")
        # A buffer gives the model a device and dtype (and save_pretrained a file) even without learned weights.
        self.register_buffer("response_candidates", torch.tensor(self.gammas))
        self.kernel_vae = PSFAutoencoder(psf_size, latent_dim, vae_width) if latent_dim > 0 else None
        if self.kernel_vae is not None:
            # The distribution of the encoded training PSFs (fitted after training): sampling draws from it.
            self.register_buffer("latent_mean", torch.zeros(latent_dim))
            self.register_buffer("latent_std", torch.ones(latent_dim))
        self.kernel_encoder = KernelEncoder(cell, psf_size, len(self.gammas), encoder_width) if encoder_width else None

    @property
    def grid_multiple(self) -> int:  # type: ignore[override]
        return self.cell

    @property
    def min_side(self) -> int:  # type: ignore[override]
        return self.cell

    @property
    def kernel_channels(self) -> int:
        return self.psf_size**2 + 1

    @property
    def has_prior(self) -> bool:
        return True

    # -- k <-> PSF field ----------------------------------------------------------------------------------------
    def psf_field(self, kernel: torch.Tensor) -> torch.Tensor:
        """(B, S*S + 1, h, w) kernel -> (B, h, w, S, S) PSFs, each non-negative and summing to one."""
        s = self.psf_size
        taps = kernel[:, : s * s].clamp_min(0)
        taps = taps / taps.sum(1, keepdim=True).clamp_min(1e-12)
        b, _, h, w = kernel.shape
        return taps.permute(0, 2, 3, 1).reshape(b, h, w, s, s)

    def response(self, kernel: torch.Tensor) -> torch.Tensor:
        """The camera-response exponent of each kernel in the batch, shaped (B, 1, 1, 1)."""
        return kernel[:, -1:].mean((2, 3), keepdim=True)

    def with_response(self, kernel: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """``kernel`` with the exponent ``gamma`` (B,) in its response channel where ``gamma`` is above 0.

        Example:
            >>> import torch
            >>> model = KernelField(cell=32, psf_size=5)
            >>> k = model.with_response(model.sample_kernel(32, 32, batch=2, seed=0), torch.tensor([1.0, 0.0]))
            >>> model.response(k).flatten().tolist()
            [1.0, 2.200000047683716]
        """
        gamma = gamma.to(kernel).view(-1, 1, 1)
        out = kernel.clone()
        out[:, -1] = torch.where(gamma > 0, gamma, kernel[:, -1])
        return out

    def pack(self, psf: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """(B, h, w, S, S) PSFs and (B,) exponents -> a (B, S*S + 1, h, w) kernel."""
        b, h, w, s, _ = psf.shape
        taps = psf.reshape(b, h, w, s * s).permute(0, 3, 1, 2)
        return torch.cat([taps, gamma.view(b, 1, 1, 1).expand(b, 1, h, w).to(taps)], 1)

    # -- the learned kernel space -----------------------------------------------------------------------------
    def _encoder(self) -> KernelEncoder:
        if self.kernel_encoder is None:
            raise ValueError("this KernelField has no learned extractor (encoder_width=0, as in models saved before "
                             "it existed): use method='fast' (the default) or 'solve', or a model with one")
        return self.kernel_encoder

    def _vae(self) -> PSFAutoencoder:
        if self.kernel_vae is None:
            raise ValueError("this KernelField has no learned kernel space (latent_dim=0); use a model with latent_dim > 0")
        return self.kernel_vae

    def encode_kernel(self, kernel: torch.Tensor) -> torch.Tensor:
        """A ``(B, S*S + 1, h, w)`` kernel -> its ``(B, latent_dim, h, w)`` latent field (posterior means)."""
        psf = self.psf_field(kernel)
        b, h, w, s, _ = psf.shape
        mu, _ = self._vae().encode(psf.reshape(-1, s, s))
        return mu.view(b, h, w, -1).permute(0, 3, 1, 2)

    def decode_kernel(self, latent: torch.Tensor, gamma: float | torch.Tensor = 2.2) -> torch.Tensor:
        """A ``(B, latent_dim, h, w)`` latent field (and the response exponent) -> a kernel; differentiable."""
        b, dim, h, w = latent.shape
        psf = self._vae().decode(latent.permute(0, 2, 3, 1).reshape(-1, dim))
        gamma = torch.as_tensor(gamma, dtype=latent.dtype, device=latent.device).expand(b)
        return self.pack(psf.view(b, h, w, self.psf_size, self.psf_size), gamma)

    def fit_canvas(self, psf: torch.Tensor) -> torch.Tensor:
        """``(N, s, s)`` PSFs of any odd size -> centred on this model's ``S x S`` canvas, renormalised."""
        return fit_canvas(psf, self.psf_size)

    def trainable_parameters(self, objective: str | None = None) -> list[torch.nn.Parameter]:
        """The VAE's parameters (``"prior"``) or the learned extractor's (``"extractor"``)."""
        part = self._vae() if self.check_objective(objective) == "prior" else self._encoder()
        return list(part.parameters())

    def training_loss(
        self,
        sharp: torch.Tensor,
        blurry: torch.Tensor,
        psf: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        objective: str | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Train the kernel space (``objective="prior"``, the default) or the learned extractor (``"extractor"``).

        F and G here are physics; what is learned is the latent space the prior and deblurring search, and
        optionally a network that does G's work in one pass. Both learn from a synthetic pair's known ``psf``;
        ``blurry`` is not used.

        - ``"prior"``: Charbonnier between the sharp image blurred with the VAE's reconstruction of the true PSF
          and with the true PSF (in linear light; the re-blur is what users see), plus a small KL. The log's
          ``shuffled`` figure is the loss with the batch's PSFs shuffled: the "does k matter" control.
        - ``"extractor"``: each crop is blurred with its PSF under a response drawn from ``gammas``, with
          Gaussian noise (sigma up to 0.01) and 8-bit rounding; the encoder's field is scored by the transfer
          loss through F (Charbonnier between the crop re-blurred with it and the noise-free blurry crop), plus
          0.01 x the L1 distance of its PSFs to the true one and 0.01 x the response's cross-entropy.
        """
        if psf is None:
            raise ValueError("KernelField learns from synthetic blur with a known PSF; train on clean photos")
        psf = self.fit_canvas(psf.to(sharp))
        if self.check_objective(objective) == "extractor":
            return self._extractor_loss(sharp, psf, generator)
        vae = self._vae()
        decoded, kl = vae(psf, generator)
        gamma = max(self.gammas)
        linear = _linear(sharp, gamma)
        target = _encoded(psf_blur(linear, psf), gamma)
        estimate = _encoded(psf_blur(linear, decoded), gamma)
        reconstruction = charbonnier(estimate, target)
        with torch.no_grad():
            shuffled = charbonnier(_encoded(psf_blur(linear, decoded.roll(1, 0)), gamma), target)
        logs = {"charbonnier": reconstruction.item(), "kl": kl.mean().item(), "shuffled": shuffled.item()}
        return reconstruction + self.kl_weight * kl.mean() / self.kernel_vae.latent_dim, logs

    def _extractor_loss(
        self, sharp: torch.Tensor, psf: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        encoder, b = self._encoder(), sharp.shape[0]
        pick = torch.randint(len(self.gammas), (b,), generator=generator)
        sigma = torch.rand(b, 1, 1, 1, generator=generator) * 0.01
        noise = torch.randn(sharp.shape, generator=generator) * sigma
        pick, noise = pick.to(sharp.device), noise.to(sharp)
        gamma = torch.tensor(self.gammas, dtype=sharp.dtype, device=sharp.device)[pick].view(-1, 1, 1, 1)
        linear = _linear(sharp, gamma)
        target = _encoded(psf_blur(linear, psf), gamma)
        blurry = ((target + noise).clamp(0, 1) * 255).round() / 255
        field, logits = encoder(sharp, blurry)
        transfer = charbonnier(_encoded(space_varying_blur(linear, field, self.cell), gamma), target)
        # The PSFs' cross-entropy with the true one (a softmax's natural loss: its gradient is their difference).
        truth = psf[:, None, None].expand_as(field)
        cross_entropy = -(truth * field.clamp_min(1e-12).log()).sum((-2, -1)).mean()
        distance = (field - truth).abs().sum((-2, -1)).mean()
        response = F.cross_entropy(logits, pick)
        logs = {"transfer": transfer.item(), "psf_ce": cross_entropy.item(), "psf_l1": distance.item(),
                "response_ce": response.item()}
        return transfer + 0.01 * (cross_entropy + response), logs

    def training_side(self, crop: int, objective: str | None = None) -> int:
        """Any side for the prior (:meth:`training_loss` blurs whole crops with one PSF each); the extractor
        needs whole cells: the nearest multiple of ``cell`` at or above ``crop``."""
        if self.check_objective(objective) == "extractor":
            return -(-crop // self.cell) * self.cell
        return crop

    @torch.no_grad()
    def finish_training(self, psf: torch.Tensor, objective: str | None = None) -> None:
        """After training the prior: fit its latent distribution (per-dimension mean and spread) to the encodings
        of ``(N, s, s)`` PSFs."""
        if self.kernel_vae is None or self.check_objective(objective) != "prior":
            return
        mu, _ = self.kernel_vae.encode(self.fit_canvas(psf.to(self.device)))
        self.latent_mean.copy_(mu.mean(0))
        self.latent_std.copy_(mu.std(0).clamp_min(1e-3))

    def _check_kernel(self, kernel: torch.Tensor, batch: int) -> torch.Tensor:
        kernel = super()._check_kernel(kernel, batch)
        values = kernel.detach()
        # A kernel under optimisation (deblurring by gradient) may pass through such cells; a given one may not.
        if not kernel.requires_grad and not (values[:, :-1].clamp_min(0).sum(1) > 0).all():
            raise ValueError(
                "kernel has a cell whose PSF taps are all zero or negative (it would give a black image); "
                "pass a kernel from extract_kernel/sample_kernel, or taps with a positive sum in every cell"
            )
        gamma = values[:, -1]
        if not (gamma > 0).all():
            raise ValueError(
                f"kernel's last channel is the camera-response exponent gamma and must be positive, got "
                f"{float(gamma.min()):g} (1.0 for linear data, 2.2 for a typical camera)"
            )
        return kernel

    # -- F, G and the prior on padded tensors ------------------------------------------------------------------
    def _blur_with_kernel(
        self, sharp: torch.Tensor, kernel: torch.Tensor, sensor: Sensor | None = None
    ) -> torch.Tensor:
        if kernel.shape[0] > 1 and kernel.stride(0) == 0:
            kernel = kernel[:1]  # one kernel expanded over the batch: normalise and transform it once
        gamma = self.response(kernel)
        blurred = space_varying_blur(_linear(sharp, gamma), self.psf_field(kernel), self.cell)
        return _encoded(blurred if sensor is None else sensor(blurred), gamma)

    def _kernel_from_pair(
        self, sharp: torch.Tensor, blurry: torch.Tensor, valid: tuple[int, int] | None = None, method: str | None = None
    ) -> tuple[torch.Tensor, None]:
        method = method or self.extractor
        if method == "fast":
            return self._fast_kernel(sharp, blurry, valid), None
        if method == "learned":
            return self._learned_kernel(sharp, blurry, valid), None
        return self._solved_kernel(sharp, blurry, valid), None

    def _responses(self, sharp: torch.Tensor, blurry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every candidate response at once, as a batch (gamma-major): the exponents (n B,) and the pair's channel
        means in linear light under each (blur commutes with the mean)."""
        n = len(self.gammas)
        gamma = torch.tensor(self.gammas, dtype=sharp.dtype, device=sharp.device).repeat_interleave(sharp.shape[0])
        g = gamma.view(-1, 1, 1, 1)
        xl, yl = (_linear(t.repeat(n, 1, 1, 1), g).mean(1, keepdim=True) for t in (sharp, blurry))
        return gamma, xl, yl

    def _best_response(self, xl, yl, psf, gamma, valid) -> torch.Tensor:
        """Per image, the index (into the gamma-major batch) of the candidate whose field ``psf`` re-blurs best."""
        b = len(gamma) // len(self.gammas)
        err = _fit_error(xl, yl, psf, self.cell, gamma.view(-1, 1, 1, 1), valid).view(-1, b)
        return err.argmin(0) * b + torch.arange(b, device=err.device)

    def _learned_kernel(self, sharp: torch.Tensor, blurry: torch.Tensor, valid: tuple[int, int] | None) -> torch.Tensor:
        valid = valid or tuple(sharp.shape[-2:])
        psf, _ = self._encoder()(sharp, blurry)
        # The response: the candidate under which the network's field re-blurs best (its own response logits
        # proved unreliable: 3 wrong of 32 Levin pairs, 1.3 dB there).
        gamma, xl, yl = self._responses(sharp, blurry)
        pick = self._best_response(xl, yl, psf.repeat(len(self.gammas), 1, 1, 1, 1), gamma, valid)
        if self.learned_steps:
            # The network's field replaces the pooled and cell-by-cell fits; the corrections finish it.
            psf = fast_psf_field(xl[pick], yl[pick], cell=self.cell, psf_size=self.psf_size, valid=valid,
                                 tikhonov=self.tikhonov, steps=self.learned_steps, init=psf)
        return self.pack(psf, gamma[pick])

    def _fast_kernel(self, sharp: torch.Tensor, blurry: torch.Tensor, valid: tuple[int, int] | None) -> torch.Tensor:
        valid = valid or tuple(sharp.shape[-2:])
        # Each candidate's pooled (uniform) fit picks the exponent; only the chosen one is then fitted per cell,
        # from the equations and pooled kernel already computed.
        gamma, xl, yl = self._responses(sharp, blurry)
        auto, cross = cell_normal_equations(xl, yl, cell=self.cell, psf_size=self.psf_size, valid=valid)
        pooled = pooled_psf(auto, cross, iterations=self.fast_iterations, tikhonov=self.tikhonov)
        pick = self._best_response(xl, yl, pooled.expand_as(cross), gamma, valid)
        psf = fast_psf_field(xl[pick], yl[pick], cell=self.cell, psf_size=self.psf_size, valid=valid,
                             iterations=self.fast_iterations, tikhonov=self.tikhonov, steps=self.fast_steps,
                             equations=(auto[pick], cross[pick]), pooled=pooled[pick])
        return self.pack(psf, gamma[pick])

    def _solved_kernel(self, sharp: torch.Tensor, blurry: torch.Tensor, valid: tuple[int, int] | None) -> torch.Tensor:
        # Coarse to fine: on the pair at half size, one estimate per response exponent (cheap: a quarter of the
        # pixels, PSFs of half the side); the exponent that fits best is kept, and its PSFs, upsampled, start the
        # single full-size estimate, which then needs fewer iterations.
        small_x, small_y = F.avg_pool2d(sharp, 2), F.avg_pool2d(blurry, 2)
        vh, vw = valid or sharp.shape[-2:]
        small_valid = (vh // 2, vw // 2)
        small_size = (self.psf_size // 2) | 1
        fields, errors = [], []
        for gamma in self.gammas:
            xl, yl = _linear(small_x, gamma), _linear(small_y, gamma)
            fields.append(estimate_psf_field(xl, yl, cell=self.cell // 2, psf_size=small_size, valid=small_valid,
                                             iterations=self.iterations, tikhonov=self.tikhonov))
            errors.append(_fit_error(xl, yl, fields[-1], self.cell // 2, gamma, small_valid))
        pick = torch.stack(errors).argmin(0)  # per image; the first candidate on a tie
        best_psf = torch.stack(fields)[pick, torch.arange(len(pick), device=pick.device)]
        best_gamma = torch.tensor(self.gammas, dtype=sharp.dtype, device=sharp.device)[pick]
        b, h, w, s, _ = best_psf.shape
        # Twice the side, odd: a psf_size of 3 mod 4 has a half size of (S - 1) / 2, whose double S - 1 is even.
        side = 2 * s if 2 * s > self.psf_size else 2 * s + 1
        init = F.interpolate(best_psf.reshape(-1, 1, s, s), size=(side, side), mode="bilinear", align_corners=False)
        init = self.fit_canvas(init[:, 0]).reshape(b, h, w, self.psf_size, self.psf_size)
        g = best_gamma.view(-1, 1, 1, 1)
        psf = estimate_psf_field(
            _linear(sharp, g), _linear(blurry, g), cell=self.cell, psf_size=self.psf_size, valid=valid,
            iterations=self.refine_iterations, tikhonov=self.tikhonov, init=init,
        )
        return self.pack(psf, best_gamma)

    def _sample_prior(self, batch: int, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        if self.prior == "latent":
            return self._sample_latent(batch, grid, generator)
        return self._sample_trajectories(batch, grid, generator)

    def _sample_latent(self, batch: int, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        dim = self._vae().latent_dim
        draw = lambda *shape: torch.randn(*shape, generator=generator, device=generator.device).to(self.device)  # noqa: E731
        # One latent per image, and a smooth variation across its cells: corner offsets blended bilinearly.
        corners = self.latent_variation * draw(batch, dim, 2, 2)
        z = draw(batch, dim, 1, 1) + F.interpolate(corners, size=grid, mode="bilinear", align_corners=True)
        z = self.latent_mean.view(1, -1, 1, 1) + self.latent_std.view(1, -1, 1, 1) * z
        return self.decode_kernel(z, max(self.gammas))

    def _sample_prior_seeded(self, seeds: list[int], grid: tuple[int, int]) -> torch.Tensor:
        if self.prior == "latent":
            return super()._sample_prior_seeded(seeds, grid)
        # Each seed's draws exactly as sample_kernel(seed=s) makes them, then one batched rasterisation.
        draws = [self._shake_draws(1, torch.Generator(device=self.device).manual_seed(s)) for s in seeds]
        return self._trajectory_kernels(torch.cat(draws), grid)

    def _sample_trajectories(self, batch: int, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
        return self._trajectory_kernels(self._shake_draws(batch, generator), grid)

    @staticmethod
    def _shake_draws(batch: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, 5) uniform numbers per kernel: the shape, its turn, mirror, extent and the camera's roll."""
        # The trajectory helpers draw on the CPU; derive their generator from the caller's, so seeds reproduce.
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        return torch.rand(batch, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def _trajectory_kernels(self, draws: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Camera-shake kernels from :meth:`_shake_draws`: a shape of the bank (:func:`_shake_shapes`), turned,
        mirrored and stretched to its extent, swept by the camera's roll across the grid."""
        batch, s, (h, w) = draws.shape[0], self.psf_size, grid
        bank = _shake_shapes()
        index, turn, mirror, extent, roll = draws.unbind(1)
        path = bank[(index * len(bank)).long().clamp_max(len(bank) - 1)]  # (B, n, 2), extent 1
        # The walk's statistics do not depend on the direction or handedness of the motion: any shape may be
        # turned and mirrored, and its extent is drawn apart from its shape (as shake_trajectory does).
        path = path * torch.stack([torch.ones(batch, dtype=path.dtype), torch.where(mirror < 0.5, -1.0, 1.0)], 1)[:, None]
        cos, sin = torch.cos(2 * math.pi * turn)[:, None], torch.sin(2 * math.pi * turn)[:, None]
        path = torch.stack([cos * path[..., 0] - sin * path[..., 1], sin * path[..., 0] + cos * path[..., 1]], -1)
        max_extent = min(self.prior_max_extent, s - 2.0)
        min_extent = min(_MIN_SHAKE_EXTENT, max_extent)
        path = path * (min_extent + (max_extent - min_extent) * extent)[:, None, None]
        # Camera roll over the exposure moves the point at offset (cx, cy) from the image centre along the
        # circle's tangent (-cy, cx) * angle(t): the blur turns with the position in the image.
        angle = (roll * 2 - 1) * math.radians(self.prior_max_rotation)
        t = torch.linspace(-0.5, 0.5, path.shape[1], dtype=torch.float64)
        cy = (torch.arange(h, dtype=torch.float64) + 0.5 - h / 2) * self.cell
        cx = (torch.arange(w, dtype=torch.float64) + 0.5 - w / 2) * self.cell
        tangent = torch.stack(torch.broadcast_tensors(-cy[:, None], cx[None, :]), -1)  # (h, w, 2) as (x, y)
        swing = angle.view(batch, 1, 1, 1, 1) * t.view(1, 1, 1, -1, 1) * tangent[None, :, :, None, :]
        paths = path[:, None, None] + swing  # (B, h, w, n, 2)
        reach = (s // 2 - 1) / paths.abs().amax((-2, -1), keepdim=True).clamp_min(1e-9)
        paths = paths * reach.clamp(max=1.0)  # keep the swept path on the canvas
        field = rasterize_psf(paths.reshape(-1, *paths.shape[-2:]), s).reshape(batch, h, w, s, s).float()
        gamma = torch.full((batch,), max(self.gammas))
        return self.pack(field, gamma).to(self.device)


_MIN_SHAKE_EXTENT = 3.0  # shortest camera shake the trajectory prior draws (pixels), as shake_trajectory's default
#: Camera-shake shapes the trajectory prior draws from; each kernel turns, mirrors and stretches one afresh, so a
#: draw needs no trajectory simulation (which costs more than blurring a 256x256 batch with the kernels).
SHAKE_SHAPES = 4096


@functools.lru_cache(maxsize=1)
def _shake_shapes() -> torch.Tensor:
    """(SHAKE_SHAPES, 128, 2) camera-shake trajectories of extent 1 with their centre of mass at 0 (float64), the
    same in every process: drawn once from a fixed seed."""
    path = shake_trajectory(torch.Generator().manual_seed(0), max_extent=1.0, min_extent=1.0, max_offset=0.0,
                            batch=SHAKE_SHAPES).double()
    com = 0.5 * (path[:, 1:] + path[:, :-1]).mean(1, keepdim=True)  # time average of the piecewise-linear path
    return path - com


def _fit_error(
    sharp_linear: torch.Tensor, blurry_linear: torch.Tensor, psf: torch.Tensor, cell: int, gamma: float,
    valid: tuple[int, int],
) -> torch.Tensor:
    """Per image, the mean squared error of the re-blurred ``sharp`` in encoded values (what the user sees),
    inside the valid region."""
    r = psf.shape[-1] // 2
    vh, vw = valid
    estimate = _encoded(space_varying_blur(sharp_linear, psf, cell), gamma)
    reference = _encoded(blurry_linear, gamma)
    return (estimate - reference)[..., r : vh - r, r : vw - r].square().mean((1, 2, 3))
