"""Adapters that make kernelspace objects behave like those of other libraries.

Each submodule needs its library, and only it imports that library (``import kernelspace`` never does):

- :mod:`kernelspace.integrations.torchvision`: :class:`~kernelspace.integrations.torchvision.KernelSpaceBlur`, a
  ``torchvision.transforms.v2`` transform (any sample structure: ``(image, label)``, dicts, boxes and masks pass
  through). :class:`~kernelspace.KernelSpaceAugment` itself also works inside ``v2.Compose`` on a single image.
- :mod:`kernelspace.integrations.albumentations`:
  :class:`~kernelspace.integrations.albumentations.KernelSpaceBlur`, an albumentations ``ImageOnlyTransform``.
- :mod:`kernelspace.integrations.deepinv`: :class:`~kernelspace.integrations.deepinv.KernelSpacePhysics`, the
  blur operator F(x, k) as a deepinv ``Physics``, and
  :class:`~kernelspace.integrations.deepinv.KernelSpaceGenerator`, which draws k as deepinv's blur generators do.

Install the library with the extra of the same name, pinning the torch you have so that pip keeps it:
``pip install torch==2.13.0 -e ".[albumentations]"``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ..device import DeviceLike
from ..hub import load_model
from ..models import KernelSpaceModel
from ..synthesis import ModelLike

__all__: list[str] = []


def require(library: str, extra: str) -> ModuleType:
    """Import ``library``, or fail with an ImportError that names the extra which installs it."""
    try:
        return importlib.import_module(library)
    except ImportError as error:
        raise ImportError(
            f"this kernelspace integration needs {library}, which is not installed: "
            f'pip install "kernelspace[{extra}]" (pin the torch you have on the same command line so that pip keeps it)'
        ) from error


def as_model(model: ModelLike, device: DeviceLike = "auto") -> KernelSpaceModel:
    """``model`` as given when it is a loaded model, else loaded with :func:`~kernelspace.load_model`."""
    if isinstance(model, KernelSpaceModel):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_model(model, device=device)
    raise TypeError(
        "model must be a KernelSpaceModel, a source for kernelspace.load_model (folder, file, Hub id) or None for the "
        f"default model; got {type(model).__name__}"
    )
