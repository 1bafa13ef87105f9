"""
Bilinear values of binary target masks at sampled points, read from the masks as stored (bool,
any resolution). Equal to detectron2's ``point_sample(masks.float()[:, None], coords,
align_corners=False)`` (``grid_sample`` with zero padding), but only the four neighbours of each
point are read: the matcher and the point-sampled losses of every decoder layer would otherwise
convert every (T, H, W) target to float at full resolution. Written for semask-d2.
"""

import torch

__all__ = ["sample_masks"]


def sample_masks(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """
    Args:
        masks (Tensor): (T, H, W) target masks (bool or numeric).
        coords (Tensor): (T or 1, P, 2) normalised (x, y) in [0, 1]^2; 1 shares the points.
    Returns:
        Tensor: (T, P) float32 bilinear values, zero outside the masks.
    """
    num_masks, height, width = masks.shape
    # point_sample's grid 2 * c - 1, unnormalised as grid_sample's CPU kernel does it for
    # align_corners=False.
    grid = 2.0 * coords.float() - 1.0
    x = (grid[..., 0] + 1) * (width / 2) - 0.5
    y = (grid[..., 1] + 1) * (height / 2) - 0.5
    x0, y0 = x.floor(), y.floor()
    x1, y1 = x0 + 1, y0 + 1
    # The kernel's weights: fractional parts and their complements, y factor first.
    wx, wy = x - x0, y - y0
    ex, sy = 1 - wx, 1 - wy
    flat = masks.reshape(num_masks, -1)
    result = torch.zeros(num_masks, coords.shape[1], device=masks.device)
    corners = ((x0, y0, sy * ex), (x1, y0, sy * wx), (x0, y1, wy * ex), (x1, y1, wy * wx))
    for cx, cy, weight in corners:
        inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)
        index = (cy.clamp(0, height - 1) * width + cx.clamp(0, width - 1)).long()
        values = flat.gather(1, index.expand(num_masks, -1)).float()
        result += values * (weight * inside).expand(num_masks, -1)
    return result
