"""
Bilinear sampling of maps at normalised points with zero padding (``grid_sample`` with
``align_corners=False``), the one convention of the deformable attention and the point-sampled
losses, with its backward pass for the autograd functions that form gradients themselves.
Written for semask-d2.
"""

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["bilinear_sample", "bilinear_sample_backward"]


def bilinear_sample(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """
    Args:
        maps (Tensor): (N, C, H, W).
        grid (Tensor): (N, h, w, 2) points (x, y) in [-1, 1].
    Returns:
        Tensor: (N, C, h, w), zero outside the maps.
    """
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def bilinear_sample_backward(
    grad: torch.Tensor, maps: torch.Tensor, grid: torch.Tensor, needs: List[bool]
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """
    Gradients of :func:`bilinear_sample` w.r.t. `maps` and `grid` for the output gradient
    `grad`; `needs` says which of the two to compute (the map gradient reads only the shape of
    `maps`).
    """
    bilinear, zeros_padding = 0, 0
    return torch.ops.aten.grid_sampler_2d_backward(
        grad, maps, grid, bilinear, zeros_padding, False, needs
    )
