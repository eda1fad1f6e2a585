"""Camera response: between the encoded values a photo stores (sRGB-like) and linear light.

Blur is an average of light over the exposure, so it must be simulated on *linear* intensities; photos store
gamma-encoded values. :func:`to_linear` and :func:`from_linear` convert between the two with one curve
family, chosen by ``gamma``:

* a number ``g`` (default 2.2): the power law ``linear = encoded ** g`` with a straight-line toe below
  ``encoded = 0.01`` (``linear = 0.01 ** g``), joined continuously;
* ``"srgb"``: the IEC 61966-2-1 sRGB curve (exponent 2.4, offset 0.055, linear toe below 0.04045).

Why a toe: a pure power law ``linear ** (1 / g)`` has an infinite slope at 0, so back-propagating through
:func:`from_linear` at black pixels would give ``inf``/``NaN`` gradients. The toe keeps every slope finite.
Each curve is defined by its encoded-side breakpoint and the linear-side breakpoint is computed from it (rather
than the rounded constants of the sRGB standard, which disagree in the 7th digit), so the two functions are
exact inverses of each other on [0, 1] to floating-point precision. Values outside [0, 1] (noise, highlights)
pass through without ``NaN``: negatives follow the linear toe, values above 1 follow the power segment.
"""

from __future__ import annotations

from typing import Union

import torch

__all__ = ["Gamma", "to_linear", "from_linear"]

#: A number (power-law exponent) or ``"srgb"``.
Gamma = Union[float, str]

_POWER_TOE = 0.01  # encoded value below which the power law is replaced by its chord: below 8-bit code 3


def _curve(gamma: Gamma) -> tuple[float, float, float, float]:
    """(exponent, offset, encoded breakpoint, linear breakpoint) of the curve named by ``gamma``."""
    if isinstance(gamma, str):
        if gamma.lower() != "srgb":
            raise ValueError(f"gamma must be a positive number or 'srgb', got {gamma!r}")
        exponent, offset, v0 = 2.4, 0.055, 0.04045
    elif isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma > 0:
        exponent, offset, v0 = float(gamma), 0.0, _POWER_TOE
    else:
        raise ValueError(f"gamma must be a positive number or 'srgb', got {gamma!r}")
    return exponent, offset, v0, ((v0 + offset) / (1.0 + offset)) ** exponent


def to_linear(x: torch.Tensor, gamma: Gamma = 2.2) -> torch.Tensor:
    """Encoded (sRGB-like) values to linear light; the inverse of :func:`from_linear`.

    Args:
        x: encoded values, nominally in [0, 1]; any shape, floating point.
        gamma: the power-law exponent (a positive number) or ``"srgb"``; see the module docstring.

    Returns:
        Linear intensities, same shape and dtype as ``x``.

    Example:
        >>> import torch
        >>> to_linear(torch.tensor([0.0, 0.5, 1.0]))  # 0.5 ** 2.2 = 0.2176
        tensor([0.0000, 0.2176, 1.0000])
    """
    exponent, offset, v0, l0 = _curve(gamma)
    # pow on the clamped input: the branch torch.where discards must not carry NaN/inf into the gradient.
    power = ((x.clamp_min(v0) + offset) / (1.0 + offset)) ** exponent
    return torch.where(x < v0, x * (l0 / v0), power)


def from_linear(x: torch.Tensor, gamma: Gamma = 2.2) -> torch.Tensor:
    """Linear light to encoded (sRGB-like) values; the inverse of :func:`to_linear`.

    Args:
        x: linear intensities, nominally in [0, 1]; any shape, floating point.
        gamma: the power-law exponent (a positive number) or ``"srgb"``; see the module docstring.

    Returns:
        Encoded values, same shape and dtype as ``x``. The slope is finite everywhere, 0 included.

    Example:
        >>> import torch
        >>> x = torch.linspace(0, 1, 5, dtype=torch.float64, requires_grad=True)
        >>> bool((to_linear(from_linear(x, "srgb"), "srgb") - x).abs().max() < 1e-12)
        True
        >>> from_linear(x).sum().backward(); bool(torch.isfinite(x.grad).all())
        True
    """
    exponent, offset, v0, l0 = _curve(gamma)
    power = (1.0 + offset) * x.clamp_min(l0) ** (1.0 / exponent) - offset
    return torch.where(x < l0, x * (v0 / l0), power)
