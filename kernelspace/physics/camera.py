"""Camera poses as image homographies: small rotations (roll, yaw, pitch) plus an image-plane translation.

For a distant scene a camera rotation ``R`` moves the picture by the homography ``K R K^-1`` (``K``: pinhole
intrinsics, principal point at the image centre), which is what makes camera-shake blur vary across the frame:
roll turns the picture about its centre and yaw/pitch add a slight keystone. Here the pose is then shifted so
that the image *centre* lands exactly on the given translation. So the translation path alone decides the
blur at the centre, which is the trajectory's PSF of :mod:`kernelspace.physics.psf`, and the rotation only adds
how the blur changes away from the centre. Rotation plus translation spans the same poses either way.

Homographies map an output pixel ``(x, y, 1)`` to the position in the sharp image that it sees, the
orientation :func:`kernelspace.physics.blur.homography_blur` expects.
"""

from __future__ import annotations

import torch

__all__ = ["camera_homographies"]


def _rotation(roll: torch.Tensor, yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch), shape (..., 3, 3)."""
    one, zero = torch.ones_like(roll), torch.zeros_like(roll)
    cr, sr, cy, sy, cp, sp = roll.cos(), roll.sin(), yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(*roll.shape, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*roll.shape, 3, 3)
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], -1).reshape(*roll.shape, 3, 3)
    return rz @ ry @ rx


def camera_homographies(
    translation: torch.Tensor,
    rotation: torch.Tensor,
    height: int,
    width: int,
    focal: float | torch.Tensor,
) -> torch.Tensor:
    """Homographies of camera poses; the image centre moves exactly by ``translation``.

    Args:
        translation: ``(..., 2)`` image-plane offsets ``(x, y)`` of the centre, pixels (trajectory convention of
            :mod:`kernelspace.physics.psf`).
        rotation: ``(..., 3)`` angles ``(roll, yaw, pitch)`` in radians, same leading shape.
        height: image height, pixels.
        width: image width, pixels.
        focal: focal length in pixels, a number or a tensor broadcastable to the leading shape.

    Returns:
        float64 ``(..., 3, 3)`` homographies from output to sharp pixel coordinates.

    Example:
        >>> import torch
        >>> H = camera_homographies(torch.tensor([2.0, -1.0]), torch.zeros(3), 5, 5, 100.0)
        >>> H.tolist()  # no rotation: a pure translation
        [[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]]
    """
    if translation.shape[-1] != 2 or rotation.shape[-1] != 3 or translation.shape[:-1] != rotation.shape[:-1]:
        raise ValueError(
            f"translation must be (..., 2) and rotation (..., 3) with the same leading shape, got "
            f"{tuple(translation.shape)} and {tuple(rotation.shape)}"
        )
    f64 = torch.float64
    translation, rotation = translation.to(f64), rotation.to(f64)
    lead = translation.shape[:-1]
    focal = torch.as_tensor(focal, dtype=f64, device=translation.device).expand(lead)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    intr = torch.zeros(*lead, 3, 3, dtype=f64, device=translation.device)
    intr[..., 0, 0], intr[..., 1, 1], intr[..., 0, 2], intr[..., 1, 2], intr[..., 2, 2] = focal, focal, cx, cy, 1.0
    intr_inv = torch.linalg.inv(intr)
    hom = intr @ _rotation(rotation[..., 0], rotation[..., 1], rotation[..., 2]) @ intr_inv
    centre = torch.tensor([cx, cy, 1.0], dtype=f64, device=translation.device)
    seen = hom @ centre
    seen = seen[..., :2] / seen[..., 2:]
    # Translate after rotating so that the centre goes to centre + translation.
    shift = torch.eye(3, dtype=f64, device=translation.device).expand(*lead, 3, 3).clone()
    shift[..., :2, 2] = translation + centre[:2] - seen
    hom = shift @ hom
    return hom / hom[..., 2:, 2:]
