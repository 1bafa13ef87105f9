"""
Swin Transformer building blocks for dense prediction (Liu et al., arXiv 2103.14030).

Written for semask-d2 from the paper and the Swin blocks of the official SeMask backbone
(``mask2former/modeling/backbone/semask_swin.py``, Picsart-AI-Research/SeMask-Segmentation);
parameter names follow the official Swin checkpoints so that ImageNet and SeMask weights load
unchanged. Every module takes the spatial size as an argument: nothing about the last input is
stored.
"""

import functools
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..fast_path import needs_grad
from ..linear import Linear

__all__ = [
    "PatchEmbed",
    "PatchMerging",
    "SwinBlock",
    "WindowAttention",
    "WindowOrder",
    "build_shift_mask",
    "merge_windows",
    "pad_to_multiple",
    "relative_position_index",
    "split_windows",
    "window_order",
    "window_partition",
]


def _pad_amount(size, multiple: int):
    # ceil(size / m) * m - size: traced, the padded size is visibly a multiple of m.
    return (size + multiple - 1) // multiple * multiple - size


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """
    Zero-pad a (B, H, W, C) tensor at the bottom and right so H and W are multiples of `multiple`.
    Branch-free (a zero pad is a copy), so that a graph traced with dynamic H, W pads any size.
    """
    _, h, w, _ = x.shape
    return F.pad(x, (0, 0, 0, _pad_amount(w, multiple), 0, _pad_amount(h, multiple)))


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """
    Args:
        x (Tensor): (B, H, W, C) with H and W multiples of `window_size`.
    Returns:
        Tensor: (B * num_windows, window_size * window_size, C), windows in row-major order.
    """
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


class WindowOrder(NamedTuple):
    """
    Where the tokens of an (h, w) grid go when it is zero-padded at the bottom/right to
    multiples of the window, cyclically shifted and cut into windows (see :func:`window_order`).
    """

    # (hp * wp,) int64: the token read at each windowed position; h * w at padding positions,
    # the index of the zero token that :func:`split_windows` appends.
    gather: torch.Tensor
    # (h * w,) int64: the windowed position of each token.
    scatter: torch.Tensor


def _padded_size(size, window_size: int):
    """`size` rounded up to a multiple of `window_size`; an int, or a SymInt when traced."""
    # The expression SeMaskSwinStage uses for the shift mask: traced window counts then match.
    return size + (-size) % window_size


def _window_grid(hp, wp, window_size: int, device: torch.device):
    """
    Row and column, in an (hp, wp) grid, of every position of its windows, as broadcastable
    (hp/ws, 1, ws, 1) and (1, wp/ws, 1, ws) int64 tensors in window-major order. Built from
    aranges, never by splitting a symbolic size: traced, it holds for any hp, wp.
    """
    ws = window_size
    offsets = torch.arange(ws, device=device)
    rows = torch.arange(hp // ws, device=device)[:, None] * ws + offsets
    cols = torch.arange(wp // ws, device=device)[:, None] * ws + offsets
    return rows[:, None, :, None], cols[None, :, None, :]


def _wrap(index: torch.Tensor, size) -> torch.Tensor:
    """`index` mod `size` for indices in [0, 2 * size): a modulo by a traced size that exports."""
    return torch.where(index >= size, index - size, index)


def window_order_uncached(h, w, window_size: int, shift: int, device: torch.device) -> WindowOrder:
    """
    :func:`window_order` without a cache or a data-dependent op: with `h` and `w` symbolic it
    traces into a graph valid for any size.
    """
    ws = window_size
    hp, wp = _padded_size(h, ws), _padded_size(w, ws)
    # Rolling by -shift reads the padded grid at (position + shift) mod size.
    rows, cols = _window_grid(hp, wp, ws, device)
    rows, cols = _wrap(rows + shift, hp), _wrap(cols + shift, wp)
    gather = torch.where((rows < h) & (cols < w), rows * w + cols, h * w).flatten()
    # Inverse: token (r, c) sits at rolled position ((r - shift) mod hp, (c - shift) mod wp),
    # here the rolled aranges, then at that position's index in window-major order.
    rows = torch.roll(torch.arange(hp, device=device), shift)[:h, None]
    cols = torch.roll(torch.arange(wp, device=device), shift)[None, :w]
    window = (rows // ws) * (wp // ws) + cols // ws
    scatter = (window * (ws * ws) + (rows % ws) * ws + cols % ws).flatten()
    return WindowOrder(gather, scatter)


_window_order_cached = functools.lru_cache(maxsize=64)(
    # Normal tensors even when first called under inference_mode: cached ones are reused in
    # training.
    torch.inference_mode(False)(window_order_uncached)
)


def window_order(h, w, window_size: int, shift: int, device: torch.device) -> WindowOrder:
    """
    Pad, roll by `-shift` and :func:`window_partition` as one token permutation, so that a
    single gather replaces three copies of the map and a single gather undoes them (window
    reverse, roll back, crop). Cached in eager mode: the same few grids recur in every forward.
    Computed afresh while tracing (``torch.export``, ``torch.compile``): a cache would keep the
    tracer's fake tensors, and symbolic sizes cannot be hashed.
    """
    if torch.compiler.is_compiling():
        return window_order_uncached(h, w, window_size, shift, device)
    return _window_order_cached(h, w, window_size, shift, device)


def split_windows(
    x: torch.Tensor,
    order: WindowOrder,
    window_size: int,
    pad_token: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """
    Args:
        x (Tensor): (B, h * w, C) tokens of the grid `order` describes.
        pad_token (Tensor or None): (C,) value of the padding positions; zeros when None.
    Returns:
        Tensor: (B * num_windows, window_size * window_size, C).
    """
    # One padding token at index h * w, read at every padding position: no branch on the
    # padding.
    if pad_token is None:
        x = F.pad(x, (0, 0, 0, 1))
    else:
        x = torch.cat([x, pad_token.to(x.dtype).expand(x.shape[0], 1, -1)], dim=1)
    windows = _take_tokens(x, order.gather)
    return windows.view(-1, window_size * window_size, x.shape[-1])


def merge_windows(windows: torch.Tensor, order: WindowOrder, batch: int) -> torch.Tensor:
    """
    Inverse of :func:`split_windows`: (B * num_windows, N, C) -> (B, h * w, C), padding dropped.
    """
    return _take_tokens(windows.reshape(batch, -1, windows.shape[-1]), order.scatter)


def _take_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, T, C) tokens and (R,) indices into T -> (B, R, C)."""
    # One row gather over the flattened batch: index_select along dim 0 of a matrix is 2-3x
    # faster on CPU than along dim 1 of the (B, T, C) tensor.
    b, t, c = x.shape
    rows = torch.arange(b, device=index.device)[:, None] * t + index
    return x.reshape(b * t, c).index_select(0, rows.flatten()).view(b, -1, c)


def relative_position_index(window_size: int) -> torch.Tensor:
    """
    Index into the (2W-1)^2 relative-position bias table for every (query, key) pair of a
    window: (dh + W - 1) * (2W - 1) + (dw + W - 1). Returns a (W*W, W*W) int64 tensor.
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[..., 0] * (2 * window_size - 1) + rel[..., 1]


def build_shift_mask(hp, wp, window_size: int, shift: int, device: torch.device) -> torch.Tensor:
    """
    Attention mask of shifted windows on a padded (hp, wp) grid: 0 between tokens of the same
    region, -100 between tokens that the cyclic shift brought together. The regions are the
    rows [0, hp - ws), [hp - ws, hp - shift), [hp - shift, hp) times the same for columns.

    Returns:
        Tensor: (num_windows, W*W, W*W) float mask.
    """
    rows, cols = _window_grid(hp, wp, window_size, device)
    region_rows = (rows >= hp - window_size).long() + (rows >= hp - shift).long()
    region_cols = (cols >= wp - window_size).long() + (cols >= wp - shift).long()
    ids = (region_rows * 3 + region_cols).flatten(0, 1).flatten(1)
    mask = ids[:, None, :] - ids[:, :, None]
    return torch.where(mask != 0, -100.0, 0.0)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `p`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class WindowAttention(nn.Module):
    """
    Multi-head self-attention inside windows with a learned relative position bias.
    """

    def __init__(
        self,
        dim: int,
        window_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window_size - 1) ** 2, num_heads)
        )
        # Persistent: official checkpoints store it, so their keys match ours one-to-one.
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x (Tensor): (B * num_windows, N, C) window tokens.
            mask (Tensor or None): (num_windows, N, N) additive mask of shifted windows.
        """
        return self.proj_drop(self.proj(self.attend(self.qkv(x), mask)))

    def attend(self, qkv: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        The attention between `qkv` and `proj`.

        Args:
            qkv (Tensor): (B * num_windows, N, 3 * C) window tokens through `qkv`.
            mask (Tensor or None): as in :meth:`forward`.
        Returns:
            Tensor: (B * num_windows, N, C), heads concatenated.
        """
        bw, n, c = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        qkv = qkv.reshape(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            # Expanded, not repeated: a free view for one image.
            bias = (bias + mask.unsqueeze(1)).expand(bw // nw, -1, -1, -1, -1).flatten(0, 1)
        x = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias.to(q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        return x.transpose(1, 2).reshape(bw, n, c)


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        if needs_grad(hidden):
            hidden = self.act(hidden)
        else:
            # In place without autograd: one (tokens, 4C) buffer fewer.
            hidden = torch.ops.aten.gelu_(hidden)
        return self.drop(self.fc2(self.drop(hidden)))


class SwinBlock(nn.Module):
    """
    One Swin block: (shifted) window attention and an MLP, each pre-normed with a residual.
    The windows pad the normalized tokens with zeros at the bottom/right; padding is cropped.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int = 7,
        shift_size: int = 0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        assert 0 <= shift_size < window_size, "shift_size must be in [0, window_size)"
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(
        self, x: torch.Tensor, h: int, w: int, shift_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """
        Args:
            x (Tensor): (B, h * w, C) tokens.
            shift_mask (Tensor or None): mask from :func:`build_shift_mask` for this grid;
                required when the block is shifted.
        """
        ws, shift, attn = self.window_size, self.shift_size, self.attn
        order = window_order(h, w, ws, shift, x.device)
        # The projections run on the h * w tokens only: a padding token is zero after norm1,
        # so its qkv is the bias, and its output is dropped before proj.
        qkv = split_windows(attn.qkv(self.norm1(x)), order, ws, pad_token=attn.qkv.bias)
        y = merge_windows(attn.attend(qkv, mask=shift_mask if shift else None), order, x.shape[0])
        x = x + self.drop_path(attn.proj_drop(attn.proj(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """
    Halve the resolution: concatenate each 2x2 neighbourhood in the order (0,0), (1,0), (0,1),
    (1,1) [(row, col) offsets], LayerNorm(4C), Linear 4C -> 2C without bias. Odd sizes are
    zero-padded at the bottom/right.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = pad_to_multiple(x.view(b, h, w, c), 2)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class PatchEmbed(nn.Module):
    """
    Non-overlapping patch embedding: zero-pad to a multiple of the patch size (bottom/right),
    Conv patch x patch with stride patch, optional LayerNorm.
    """

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, norm=True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
        """
        Returns:
            (Tensor, int, int): tokens (B, h * w, C) and the token grid size h, w.
        """
        p = self.patch_size
        _, _, h, w = x.shape
        x = self.proj(F.pad(x, (0, _pad_amount(w, p), 0, _pad_amount(h, p))))
        h, w = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, h, w
