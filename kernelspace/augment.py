"""Blur augmentation from a kernel space: real blurs (kernels of your own blurry/sharp pairs) or the model's prior.

:class:`KernelSpaceAugment` blurs each image of a batch, independently, with probability ``p``. By default every
blurred sample gets its own kernel, drawn from the model's prior from a seed of its own
(:meth:`~kernelspace.models.KernelSpaceModel.sample_kernels`); real kernels, or a fixed pool of prior kernels
(``pool_size=``), are drawn from by index. Every batch costs one draw of its kernels and one call of the model's
blur operator.

It is a real :mod:`kornia.augmentation` intensity augmentation (it drops into
:class:`kornia.augmentation.AugmentationSequential`, masks and boxes pass through), and, like a torchvision
transform, it takes PIL images and numpy arrays too and gives back the kind it was given.

Random parameters are drawn apart from their application, as in kornia: :meth:`KernelSpaceAugment.forward_parameters`
returns a dict (``batch_prob``: which samples are blurred; ``kernel_index``: the pool kernel of each, or -1 for a
kernel of its own; ``kernel_seed``: the seed of that kernel), and ``aug(x, params=params)`` or
``aug.apply(x, params)`` replays exactly, in any process; the last parameters are kept in ``aug._params``, so
the same blur can be put on a second input, and :meth:`KernelSpaceAugment.kernels` gives the kernels themselves.

A degradation chain (``degradation=``, a :class:`~kernelspace.physics.degrade.Degradation`) makes the blurred
samples look like real photos: in linear light, blur -> Poisson-Gaussian sensor noise -> clipping -> camera
response -> JPEG, each of the two added stages with a probability of its own. The blur, clipping and response are
the model's (:meth:`~kernelspace.models.KernelSpaceModel.apply_kernel`, which runs the noise between the blur and
the clipping); noise and JPEG are :mod:`kernelspace.physics.degrade`. Their parameters join the dict
(``noise_prob``, ``noise_shot``, ``noise_read``, ``noise_seed``, ``jpeg_prob``, ``jpeg_quality``), drawn after the
blur's, so a seed gives the same kernels with the chain or without, and they replay exactly too: each sample's
noise comes from its own ``noise_seed``. Without ``degradation`` (the default) nothing changes.

DataLoader workers: the augmentation pickles without its model; each worker loads the model once, on first use
(the default model, or the ``model=`` source given). PyTorch runs every worker with ``torch.set_num_threads(1)``
and the augmentation starts no threads of its own, so ``num_workers`` workers use ``num_workers`` cores. Blurring
batches in the main process beside busy workers, give ``threads=1`` (or call ``torch.set_num_threads``): threads
that wait for cores the workers hold make it several times slower. Parameters are drawn from PyTorch's global
generator unless a ``generator`` is passed; DataLoader seeds that generator in each worker from its own
generator, anew every epoch, so every worker and epoch draws other blurs, and
``DataLoader(..., generator=torch.Generator().manual_seed(s))`` (or ``torch.manual_seed(s)`` before iterating)
replays a run.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from typing import Any

import torch
from kornia.augmentation import IntensityAugmentationBase2D

from .device import check_threads, torch_threads
from .hub import load_model
from .io import ImageLike, from_tensor, to_tensor
from .models import KernelSpaceModel
from .physics.degrade import Degradation, jpeg_compress, sensor_noise
from .synthesis import ModelLike

__all__ = ["KernelSpaceAugment"]

_SOURCES = ("prior", "pool", "both")
_PARAM_KEYS = ("batch_prob", "kernel_index", "kernel_seed")
_MAX_POOLS = 16  # kernel grids whose pools are kept (the default model's kernels: 6.7 KB per kernel and grid cell)
_OWN = -1  # kernel_index of a sample whose kernel is drawn from its own seed


class KernelSpaceAugment(IntensityAugmentationBase2D):
    """Random blur from a kernel-space model, each sample independently; see the module docstring.

    Args:
        p: probability that a sample is blurred.
        kernels: the real blurs to draw from (``source="pool"`` or ``"both"``): a ``(N, C, h, w)`` tensor of
            kernels (from ``extract_kernel``), or a list whose items are kernels or ``(sharp, blurry)`` image
            pairs; pairs are turned into kernels once, here (``extract_kernel`` may take seconds per pair).
        source: ``"prior"`` (kernels drawn from the model's prior), ``"pool"`` (only ``kernels``) or ``"both"``
            (half the blurred samples from each); ``None`` means ``"pool"`` when ``kernels`` are given, else
            ``"prior"``.
        model: a :class:`~kernelspace.models.KernelSpaceModel`, or anything :func:`~kernelspace.load_model`
            accepts (``None``: the default model). A source is loaded lazily, once per process and device, and
            not pickled; a model object is pickled with the augmentation.
        return_pair: return ``(sharp, blurry)`` instead of the blurry image alone (training data for deblurring
            networks); unblurred samples have ``blurry == sharp``. Not for use inside kornia containers.
        pool_size: ``None`` (the default): every sample drawn from the prior gets a kernel of its own, from its own
            seed (``params["kernel_seed"]``). A number: the prior's kernels come from a fixed pool of that many,
            the same in every process and run (a network trained on it sees only ``pool_size`` blurs; for
            reproducing earlier experiments). With the default model the pool holds ``pool_size`` x 6.7 KB per
            128-px cell of the image: 330 MB for 64 kernels at 4000x3000.
        pool_seed: seed of the fixed pool's kernels (with ``pool_size``).
        threads: CPU threads PyTorch uses while blurring (``None``: PyTorch's setting). Inside DataLoader workers
            PyTorch already uses one; in the main process beside busy workers, ``threads=1`` is often several
            times faster than the default of one per core (:func:`~kernelspace.device.torch_threads`).
        degradation: ``None`` (blur only), or the sensor noise and JPEG stages to add to each blurred sample
            (:class:`~kernelspace.physics.degrade.Degradation`; ``Degradation()`` has defaults for handheld
            photos at ISO 100-3200). Samples left unblurred (``p``) are left untouched.

    Example:
        >>> import torch
        >>> from kernelspace.models import KernelField
        >>> aug = KernelSpaceAugment(p=1.0, model=KernelField(cell=32, psf_size=7))
        >>> x = torch.rand(4, 3, 32, 48)
        >>> y = aug(x, generator=torch.Generator().manual_seed(0))
        >>> y.shape, aug._params["kernel_seed"].shape
        (torch.Size([4, 3, 32, 48]), torch.Size([4]))
        >>> torch.equal(aug(x, params=aug._params), y)  # replay
        True
        >>> aug.kernels(aug._params, 32, 48).shape  # each sample's own kernel
        torch.Size([4, 50, 1, 2])
        >>> sharp, blurry = KernelSpaceAugment(p=1.0, model=aug.model, return_pair=True)(x[0])
        >>> sharp.shape, blurry.shape
        (torch.Size([3, 32, 48]), torch.Size([3, 32, 48]))

        The full chain, replayed from its parameters:

        >>> from kernelspace.physics.degrade import Degradation
        >>> real = KernelSpaceAugment(p=1.0, model=aug.model, degradation=Degradation(p_jpeg=1.0))
        >>> y = real(x, generator=torch.Generator().manual_seed(0))
        >>> torch.equal(real(x, params=real._params), y), int(real._params["jpeg_quality"].min()) >= 60
        (True, True)
    """

    def __init__(
        self,
        p: float = 0.5,
        kernels: torch.Tensor | Sequence[torch.Tensor | tuple[ImageLike, ImageLike]] | None = None,
        source: str | None = None,
        model: ModelLike = None,
        return_pair: bool = False,
        pool_size: int | None = None,
        pool_seed: int = 0,
        threads: int | None = None,
        degradation: Degradation | None = None,
    ) -> None:
        self.threads = check_threads(threads)
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        super().__init__(p=float(p), same_on_batch=False, keepdim=True)
        if source is None:
            source = "pool" if kernels is not None else "prior"
        if source not in _SOURCES:
            raise ValueError(f"source must be one of {', '.join(map(repr, _SOURCES))}, got {source!r}")
        if kernels is None and source != "prior":
            raise ValueError(f"source={source!r} draws from kernels=, but none were given (or use source='prior')")
        if kernels is not None and source == "prior":
            raise ValueError("kernels were given but source='prior' ignores them; use source='pool' or 'both'")
        if pool_size is not None and (not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1):
            raise ValueError(f"pool_size must be None (a kernel per sample) or a positive integer, got {pool_size!r}")
        if not isinstance(pool_seed, int) or isinstance(pool_seed, bool):
            raise ValueError(f"pool_seed must be an integer, got {pool_seed!r}")
        if not isinstance(return_pair, bool):
            raise ValueError(f"return_pair must be True or False, got {return_pair!r}")
        if degradation is not None and not isinstance(degradation, Degradation):
            raise TypeError(
                "degradation must be None (blur only) or a kernelspace.physics.degrade.Degradation, "
                f"got {type(degradation).__name__}"
            )
        self.degradation = degradation
        self.source, self.return_pair = source, return_pair
        self.pool_size, self.pool_seed = pool_size, pool_seed
        # The models live in a plain dict (by device), not as submodules: they stay out of state_dict and, when
        # loaded from a source, out of pickles.
        self._models: dict[str, KernelSpaceModel] = {}
        self._pools: dict[tuple[str, int, int], torch.Tensor] = {}  # by device and grid
        if isinstance(model, KernelSpaceModel):
            self._model_source, self._model_given = None, True
            self._models[str(model.device)] = model.eval()
        elif model is None or isinstance(model, (str, os.PathLike)):
            self._model_source, self._model_given = model, False
        else:
            raise TypeError(
                "model must be a KernelSpaceModel, a source for kernelspace.load_model or None, "
                f"got {type(model).__name__}"
            )
        self._real_kernels = self._collect_kernels(kernels) if kernels is not None else []
        if source != "pool" and not self.model.has_prior:
            raise ValueError(f"{type(self.model).__name__} has no prior to draw kernels from; use source='pool'")
        self.flags = {"source": source, "kernels": self.num_kernels}

    # -- the model and the kernel pool ---------------------------------------------------------------------------
    @property
    def model(self) -> KernelSpaceModel:
        """The kernel-space model (loaded on first use when given as a source)."""
        return self._model_on(next(iter(self._models), "cpu"))

    @property
    def num_kernels(self) -> int:
        """Size of the pool that ``kernel_index`` points into: the real kernels first, then the prior's fixed pool
        (with ``pool_size``)."""
        return len(self._real_kernels) + (self.pool_size if self._prior_pooled else 0)

    @property
    def _param_keys(self) -> tuple[str, ...]:
        """The per-sample keys of this augmentation's parameters."""
        return _PARAM_KEYS + (Degradation.PARAM_KEYS if self.degradation is not None else ())

    @property
    def _prior_pooled(self) -> bool:
        return self.source != "pool" and self.pool_size is not None

    def _model_on(self, device: torch.device | str) -> KernelSpaceModel:
        key = str(torch.device(device))
        if key not in self._models:
            if self._model_given:
                self._models[key] = copy.deepcopy(next(iter(self._models.values()))).to(key)
            else:
                self._models[key] = load_model(self._model_source, device=key)
        return self._models[key]

    def _collect_kernels(self, kernels: Any) -> list[torch.Tensor]:
        if isinstance(kernels, torch.Tensor):
            kernels = list(kernels if kernels.ndim == 4 else kernels[None])
        if not isinstance(kernels, (list, tuple)) or len(kernels) == 0:
            raise ValueError(
                "kernels must be a (N, C, h, w) tensor or a non-empty list of kernels or (sharp, blurry) pairs, "
                f"got {type(kernels).__name__}"
            )
        channels = self.model.kernel_channels
        out = []
        for i, item in enumerate(kernels):
            if isinstance(item, torch.Tensor):
                k = item.detach().float().cpu()
                k = k[None] if k.ndim == 3 else k
                if k.ndim != 4 or k.shape[:2] != (1, channels):
                    raise ValueError(f"kernels[{i}] must be a ({channels}, h, w) kernel, got shape {tuple(item.shape)}")
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                k = self.model.extract_kernel(*item).cpu()
                if k.shape[0] != 1:
                    raise ValueError(f"kernels[{i}] is a pair of batches; give one (sharp, blurry) pair per item")
            else:
                raise ValueError(
                    f"kernels[{i}] must be a kernel tensor or a (sharp, blurry) pair, got {type(item).__name__}"
                )
            out.append(k)
        return out

    def kernel_pool(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ``(num_kernels, C, h, w)`` kernels that ``kernel_index`` points into, for images of ``height`` x
        ``width`` on ``device`` (cached).

        Real kernels are resized to that image size's kernel grid; a fixed pool of prior kernels (``pool_size``) is
        drawn for it (from ``pool_seed``, so kernel ``i`` is the same camera shake at every size). Sizes with the
        same grid share one pool, and the most recently built pools are kept.
        """
        model = self._model_on(device)
        key = (str(model.device), *model.kernel_size_for(height, width))
        if key not in self._pools:
            if len(self._pools) >= _MAX_POOLS:  # many image sizes: forget the oldest grid
                del self._pools[next(iter(self._pools))]
            parts = [model.resize_kernel(k.to(model.device), height, width) for k in self._real_kernels]
            if self._prior_pooled:
                generator = torch.Generator().manual_seed(self.pool_seed)
                parts.append(model.sample_kernel(height, width, batch=self.pool_size, generator=generator))
            grid = model.kernel_size_for(height, width)
            empty = torch.empty(0, model.kernel_channels, *grid, device=model.device)
            self._pools[key] = torch.cat(parts) if parts else empty
        return self._pools[key]

    # -- parameters ----------------------------------------------------------------------------------------------
    def kernels(
        self, params: dict[str, torch.Tensor], height: int, width: int, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """The ``(B, C, h, w)`` kernel each sample of ``params`` stands for (blurred or not), for images of
        ``height`` x ``width``: to keep the true kernel beside a training pair, or to study the blurs drawn.
        """
        self._check_params(params)
        model = self._model_on(device)
        index, seeds = params["kernel_index"].cpu(), params["kernel_seed"].cpu()
        own = index == _OWN
        grid = model.kernel_size_for(height, width)
        out = torch.empty(len(index), model.kernel_channels, *grid, device=model.device)
        if bool(own.any()):
            out[own.to(out.device)] = model.sample_kernels(height, width, seeds[own])
        if not bool(own.all()):
            pool = self.kernel_pool(height, width, device)
            out[(~own).to(out.device)] = pool[index[~own].to(pool.device)]
        return out

    def forward_parameters(
        self, batch_shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Draw which samples are blurred (``batch_prob``), the pool kernel of each (``kernel_index``, -1 for a
        kernel of its own) and the seed of its own kernel (``kernel_seed``); with ``degradation``, then the
        noise and JPEG parameters (:meth:`~kernelspace.physics.degrade.Degradation.sample`).

        Args:
            batch_shape: the batch's shape (only its first entry, the batch size, matters).
            generator: a CPU :class:`torch.Generator`; ``None`` uses PyTorch's global one. Parameters are drawn
                on the CPU whatever device the images are on.
        """
        batch = int(batch_shape[0])
        if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
            raise ValueError(f"generator must be a CPU torch.Generator or None, got {generator!r}")
        # A fixed drawing order, everything drawn whatever the options: a seed gives each sample the same draws.
        gate = torch.rand(batch, generator=generator) < self.p
        real = torch.randint(0, max(1, len(self._real_kernels)), (batch,), generator=generator)
        pooled = len(self._real_kernels) + torch.randint(0, self.pool_size or 1, (batch,), generator=generator)
        use_prior = torch.rand(batch, generator=generator) < 0.5
        seed = torch.randint(0, 2**62, (batch,), generator=generator)
        prior = pooled if self._prior_pooled else torch.full_like(pooled, _OWN)
        if self.source == "pool":
            index = real
        elif self.source == "prior":
            index = prior
        else:
            index = torch.where(use_prior, prior, real)
        params = {
            "batch_prob": gate.float(),
            "kernel_index": index,
            "kernel_seed": seed,
            "forward_input_shape": torch.tensor(tuple(batch_shape), dtype=torch.long),
        }
        if self.degradation is not None:
            params.update(self.degradation.sample(batch, generator))
        return params

    def _check_params(self, params: Any, batch: int | None = None) -> None:
        """Raise unless ``params`` fit this augmentation (and a batch of ``batch``, when given)."""
        keys = self._param_keys
        if not isinstance(params, dict) or any(k not in params for k in keys):
            raise ValueError(
                f"params must be a dict with {', '.join(keys)} (from forward_parameters or aug._params), "
                f"got {params!r:.80}"
            )
        index = params["kernel_index"]
        batch = index.shape[0] if batch is None else batch
        if any(params[k].shape != (batch,) for k in keys):
            raise ValueError(f"params were drawn for a batch of {index.shape[0]} images, got {batch}")
        lowest = _OWN if self.source != "pool" and not self._prior_pooled else 0
        if index.numel() and not lowest <= int(index.min()) <= int(index.max()) < self.num_kernels:
            raise ValueError(
                f"params['kernel_index'] must lie in [{lowest}, {self.num_kernels}): the pool's kernels"
                + (", or -1 for a kernel drawn from the sample's kernel_seed" if lowest < 0 else "")
            )
        if self.degradation is not None:
            quality, noise = params["jpeg_quality"], torch.cat([params["noise_shot"], params["noise_read"]])
            if quality.numel() and not 1 <= int(quality.min()) <= int(quality.max()) <= 100:
                raise ValueError("params['jpeg_quality'] must lie in [1, 100] (libjpeg's quality scale)")
            if not bool(torch.isfinite(noise).all() & (noise >= 0).all()):
                raise ValueError("params['noise_shot'] and params['noise_read'] must be finite and at least 0")
            gamma = params["response_gamma"]
            if not bool(((gamma >= 0) & (gamma <= 10)).all()):
                raise ValueError("params['response_gamma'] must lie in [0, 10] (0: the kernel's own response)")

    # -- applying ------------------------------------------------------------------------------------------------
    def apply_transform(
        self,
        input: torch.Tensor,
        params: dict[str, torch.Tensor],
        flags: dict[str, Any],
        transform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """kornia's hook: blur the selected samples of a ``(B, C, H, W)`` batch with their kernels."""
        self._check_params(params, input.shape[0])
        with torch_threads(self.threads):
            return self._blur_selected(input, params)

    def _blur_selected(self, input: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        selected = (params["batch_prob"] > 0.5).cpu()
        if not bool(selected.any()):
            return input
        if bool(selected.all()):  # one call for the whole batch, no copies
            return self._degrade(input, params)
        chosen = {k: params[k].cpu()[selected] for k in self._param_keys}
        rows = selected.nonzero().flatten().to(input.device)
        out = input.clone()
        out[rows] = self._degrade(input[rows], chosen)
        return out

    def _degrade(self, sharp: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The chain on a batch whose every sample is blurred: the blur, noise in linear light, clipping and the
        response (the model's), JPEG."""
        model = self._model_on(sharp.device)
        kernels = self.kernels(params, *sharp.shape[-2:], sharp.device)
        if self.degradation is None:
            return model.apply_kernel(sharp, kernels)
        noisy = params["noise_prob"].cpu() > 0.5
        shot, read = (params[k].cpu() * noisy for k in ("noise_shot", "noise_read"))  # 0 and 0: no noise
        sensor = functools.partial(sensor_noise, shot=shot, read=read, seed=params["noise_seed"].cpu())
        gamma = params["response_gamma"].cpu()
        if bool((gamma > 0).any()):  # a response of the sample's own instead of the kernel's
            kernels = model.with_response(kernels, gamma)
        blurry = model.apply_kernel(sharp, kernels, sensor=sensor)
        coded = (params["jpeg_prob"] > 0.5).cpu()
        if not bool(coded.any()):
            return blurry
        rows = coded.nonzero().flatten()
        decoded = jpeg_compress(blurry[rows.to(blurry.device)], params["jpeg_quality"].cpu()[rows])
        return blurry.index_copy(0, rows.to(blurry.device), decoded)

    def forward(
        self,
        images: ImageLike | Sequence[ImageLike],
        params: dict[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> Any:
        """Blur ``images`` (a PIL image, numpy array, CxHxW or BxCxHxW tensor, or a list of them).

        Args:
            images: what to blur; the result has the same kind (a list for a list).
            params: parameters to replay (from :meth:`forward_parameters` or ``aug._params``); ``None`` draws
                new ones.
            generator: CPU generator for the new parameters (``None``: PyTorch's global one).
            **kwargs: passed on to kornia (its containers add ``data_keys``).

        Returns:
            The blurred images, or ``(sharp, blurry)`` with ``return_pair=True``.
        """
        if self.return_pair and "data_keys" in kwargs:
            raise ValueError("return_pair=True cannot be used inside a kornia container; use return_pair=False there")
        if isinstance(images, (list, tuple)):
            return self._forward_list(list(images), params, generator)
        x, spec = to_tensor(images, name="images")
        if params is None:
            params = self.forward_parameters(tuple(x.shape), generator)
        self._check_params(params, x.shape[0])
        blurry = from_tensor(super().forward(x, params=params, **kwargs), spec)
        out = (from_tensor(x, spec), blurry) if self.return_pair else (blurry,)
        if isinstance(images, torch.Tensor) and type(images) is not torch.Tensor:
            # A tensor subclass (torchvision's tv_tensors.Image) comes back as one: the transforms after this one
            # then treat both images of a pair as images (they pass a second plain tensor through untouched).
            out = tuple(t.as_subclass(type(images)) for t in out)
        return out if self.return_pair else out[0]

    def _forward_list(
        self, images: list[ImageLike], params: dict[str, torch.Tensor] | None, generator: torch.Generator | None
    ) -> Any:
        if not images:
            raise ValueError("images is an empty list; give at least one image")
        if params is None:
            params = self.forward_parameters((len(images),), generator)
        self._check_params(params, len(images))
        outs = [
            self.forward(img, params={k: params[k][i : i + 1] for k in self._param_keys})
            for i, img in enumerate(images)
        ]
        self._params = params
        return tuple(map(list, zip(*outs))) if self.return_pair else outs

    def apply(self, images: Any, params: dict[str, torch.Tensor] | None = None) -> Any:  # type: ignore[override]
        """Replay ``params`` on ``images``: ``aug.apply(mask_or_other_view, aug._params)``.

        (Called with a function alone, it is :meth:`torch.nn.Module.apply`, so that ``parent.apply(init_fn)``
        still walks through this module.)
        """
        if callable(images) and params is None:
            return super().apply(images)
        if params is None:
            raise ValueError(
                "apply needs params (from forward_parameters or aug._params); to draw new ones, call aug(x)"
            )
        return self.forward(images, params=params)

    # -- pickling (DataLoader workers) ---------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_pools"] = {}  # rebuilt on first use, from the same seeds
        if not self._model_given:
            state["_models"] = {}  # reloaded from the source, once per worker
        return state
