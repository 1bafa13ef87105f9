"""
Bilinear values of binary target masks at sampled points, read from the masks as stored (bool,
any resolution). Equal to detectron2's ``point_sample(masks.float()[:, None], coords,
align_corners=False)`` (``grid_sample`` with zero padding), but only the four neighbours of each
point are read. The matcher and the point-sampled losses of every decoder layer read the targets
of a batch at new points each time, so the masks are laid out once per batch (:class:`MaskTable`)
with a zero border: every corner of every point is then one index into one table, with no
bounds test and no per-layer copy of the matched masks. Written for semask-d2.

Points are given in ``grid_sample``'s convention, normalised (x, y) in [-1, 1] (point_sample's
``2 * coords - 1``).
"""

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from .bilinear_sampling import bilinear_sample

__all__ = ["ImageMasks", "MaskTable", "grid_sample_points", "sample_masks", "uniform_grid"]

# Zero rows and columns around every mask: one before, two after, so that a point clamped to
# [-1, size] has both neighbours inside the table.
_BORDER_BEFORE, _BORDER_AFTER = 1, 2


class MaskTable:
    """
    The binary masks of several images, zero-padded at the bottom and right to the largest
    image and bordered with zeros, as one (T, (H + 3) * (W + 3)) uint8 table of 2x2
    neighbourhoods: bits 0-3 of entry (y, x) are the pixels (x, y), (x + 1, y), (x, y + 1) and
    (x + 1, y + 1), so that a bilinear read is one lookup.
    """

    def __init__(self, masks: Sequence[torch.Tensor]):
        """
        Args:
            masks (list[Tensor]): per image (T_b, H_b, W_b) binary masks (bool or 0/1).
        """
        self.sizes: List[Tuple[int, int]] = [tuple(m.shape[-2:]) for m in masks]
        self.starts: List[int] = [0]
        for m in masks:
            self.starts.append(self.starts[-1] + m.shape[0])
        # The largest image: every mask is zero-padded to it.
        self.size = (
            max((h for h, _ in self.sizes), default=0),
            max((w for _, w in self.sizes), default=0),
        )
        border = _BORDER_BEFORE + _BORDER_AFTER
        self.height, self.width = self.size[0] + border, self.size[1] + border
        device = masks[0].device if len(masks) else None
        pixels = torch.zeros(
            self.starts[-1], self.height, self.width, dtype=torch.uint8, device=device
        )
        for m, start, (h, w) in zip(masks, self.starts, self.sizes):
            b = _BORDER_BEFORE
            pixels[start : start + m.shape[0], b : b + h, b : b + w] = m.bool()
        # Bits of disjoint pixels: adding is or-ing.
        pairs = pixels.clone()
        pairs[:, :, :-1].add_(pixels[:, :, 1:], alpha=2)
        quads = pairs.clone()
        quads[:, :-1].add_(pairs[:, 1:], alpha=4)
        self.table = quads.view(self.starts[-1], self.height * self.width)

    def image(self, index: int) -> "ImageMasks":
        """The masks of image `index`."""
        return ImageMasks(self, index)

    def rows(self, image: int, index: torch.Tensor) -> torch.Tensor:
        """Table rows of the masks `index` (int64) of image `image`."""
        return index.to(self.table.device) + self.starts[image]

    def sample(self, grid: torch.Tensor, rows: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """
        Args:
            grid (Tensor): (N or 1, P, 2) points (x, y) in [-1, 1] normalised to `size`;
                1 shares the points between all rows.
            rows (Tensor): (N,) int64 table rows to read.
            size (tuple[int, int]): (H, W) that `grid` is normalised to (the masks' own size,
                or a larger size they are zero-padded to).
        Returns:
            Tensor: (N, P) float32 bilinear values, zero outside the masks.
        """
        height, width = size
        grid = grid.float()
        # grid_sample's CPU unnormalisation for align_corners=False, then clamped to the
        # border: a point further out reads zeros from the border as grid_sample reads padding.
        x = (grid[..., 0] + 1).mul_(width / 2).sub_(0.5).clamp_(-1, width)
        y = (grid[..., 1] + 1).mul_(height / 2).sub_(0.5).clamp_(-1, height)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x.sub_(x0), y.sub_(y0)
        first = (y0.long() + _BORDER_BEFORE) * self.width + (x0.long() + _BORDER_BEFORE)
        first = first + (rows * self.table.shape[1])[:, None]
        # Broadcast to one table row per point row, so that the gather runs on all threads.
        quads = self.table.view(-1).expand(first.shape[0], -1).gather(1, first)
        top_left, top_right, bottom_left, bottom_right = (
            quads.bitwise_and(1 << bit).bool().float() for bit in range(4)
        )
        top = top_left.lerp_(top_right, fx)
        return top.lerp_(bottom_left.lerp_(bottom_right, fx), fy)


class ImageMasks(NamedTuple):
    """The masks of one image of a :class:`MaskTable`."""

    table: MaskTable
    image: int

    def __len__(self) -> int:
        return self.table.starts[self.image + 1] - self.table.starts[self.image]

    def sample(self, grid: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            grid (Tensor): (N or 1, P, 2) points in [-1, 1] of the image's own size.
            index (Tensor): (N,) int64 masks to read; all masks in order when None.
        Returns:
            Tensor: (N, P) float32 bilinear values.
        """
        if index is None:
            index = torch.arange(len(self), device=self.table.table.device)
        rows = self.table.rows(self.image, index)
        return self.table.sample(grid, rows, self.table.sizes[self.image])


def sample_masks(masks: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """
    Args:
        masks (Tensor): (T, H, W) target masks (bool or numeric).
        grid (Tensor): (T or 1, P, 2) points (x, y) in [-1, 1]; 1 shares the points.
    Returns:
        Tensor: (T, P) float32 bilinear values, zero outside the masks.
    """
    return MaskTable([masks]).image(0).sample(grid)


def uniform_grid(*shape: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """
    Uniform points in [-1, 1): exactly ``2 * torch.rand(*shape) - 1`` from the same random
    draws (uniform_ maps each 24-bit draw k to k / 2**23 - 1, exact in float32), without the
    two passes over the points.
    """
    return torch.empty(*shape, device=device).uniform_(-1, 1)


def grid_sample_points(maps: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """
    detectron2's ``point_sample(maps, (grid + 1) / 2, align_corners=False)`` for points
    already in [-1, 1].

    Args:
        maps (Tensor): (N, C, H, W).
        grid (Tensor): (N, P, 2).
    Returns:
        Tensor: (N, C, P).
    """
    return bilinear_sample(maps, grid[:, :, None, :])[..., 0]
