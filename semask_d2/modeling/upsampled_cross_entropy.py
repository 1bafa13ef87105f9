"""
Cross-entropy of bilinearly upsampled logits without materialising them.

``F.cross_entropy(F.interpolate(x, size, mode="bilinear"), labels, reduction="sum")`` on the
prior maps of SeMask holds (B, K, H, W) logits at the image resolution, their log-softmax and
their gradients at once: about 1.2 GB for K = 150 at 2 x 512 x 512. Here the width is upsampled
by ``F.interpolate`` (a quarter of that size), and the height, the softmax, the loss and its
gradient run over bands of output rows in one pass. Same interpolation weights as PyTorch's
bilinear kernel (width first, then height), same loss; only the summation order differs.
Written for semask-d2.
"""

import torch
import torch.nn.functional as F

__all__ = ["upsampled_cross_entropy_sum"]

# Output rows per band: bounds the transient memory to (B, K, ROWS, W) tensors.
ROWS_PER_BAND = 32


def _source_rows(in_size: int, out_size: int, align_corners: bool):
    """(row0, row1, weight0, weight1) per output row, as PyTorch's bilinear upsampling."""
    dst = torch.arange(out_size, dtype=torch.float32)
    if align_corners:
        scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
        src = torch.tensor(scale, dtype=torch.float32) * dst
    else:
        scale = torch.tensor(in_size / out_size, dtype=torch.float32)
        src = (scale * (dst + 0.5) - 0.5).clamp(min=0)
    row0 = src.long().clamp(max=in_size - 1)
    row1 = (row0 + 1).clamp(max=in_size - 1)
    weight1 = src - row0
    return row0, row1, 1 - weight1, weight1


class _BandedUpsampledCrossEntropy(torch.autograd.Function):
    """
    The loss and, in the same pass over the bands, its gradient (softmax - onehot on labelled
    pixels, scattered back to the source rows): nothing of the bands is kept or recomputed.
    """

    @staticmethod
    def forward(ctx, rows, targets, row0, row1, weight0, weight1, ignore_value):
        need_grad = ctx.needs_input_grad[0]
        grad_rows = torch.zeros_like(rows) if need_grad else None
        total = torch.zeros((), dtype=torch.float64, device=rows.device)
        for band in _bands(targets.shape[1]):
            sources = (row0[band], row1[band])
            weights = (weight0[band], weight1[band])
            # (B, K, band rows, W): PyTorch's kernel blends the two width-interpolated rows.
            logits = weights[0] * rows[:, :, sources[0]] + weights[1] * rows[:, :, sources[1]]
            labels = targets[:, band]
            valid = labels != ignore_value
            labels = labels.masked_fill(~valid, 0)[:, None]
            valid = valid.to(rows.dtype)[:, None]
            log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
            nll = log_norm - logits.gather(1, labels)
            total += (nll * valid).sum(dtype=torch.float64)
            if need_grad:
                # d/dz (logsumexp(z) - z_label) = softmax(z) - onehot(label).
                grad = logits.sub_(log_norm).exp_()
                grad.scatter_add_(1, labels, -torch.ones_like(valid))
                grad.mul_(valid)
                for source, weight in zip(sources, weights):
                    grad_rows.index_add_(2, source, grad * weight)
        ctx.save_for_backward(grad_rows)
        return total.to(rows.dtype)

    @staticmethod
    def backward(ctx, grad):
        (grad_rows,) = ctx.saved_tensors
        return grad_rows * grad, None, None, None, None, None, None


def _bands(height: int):
    return [
        slice(start, min(start + ROWS_PER_BAND, height))
        for start in range(0, height, ROWS_PER_BAND)
    ]


def upsampled_cross_entropy_sum(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    align_corners: bool,
    ignore_value: int,
) -> torch.Tensor:
    """
    ``F.cross_entropy(F.interpolate(logits, targets.shape[-2:], mode="bilinear",
    align_corners=align_corners), targets, ignore_index=ignore_value, reduction="sum")``,
    differentiable in `logits`, with transient memory of a few row bands instead of the whole
    upsampled map.

    Args:
        logits (Tensor): (B, K, h, w) float logits.
        targets (Tensor): (B, H, W) int64 labels in [0, K) or `ignore_value`.
        align_corners (bool): as in ``F.interpolate``.
        ignore_value (int): label of pixels that do not count.
    Returns:
        Tensor: scalar sum of the per-pixel losses, in `logits`' dtype.
    """
    out_h, out_w = targets.shape[-2:]
    in_h = logits.shape[-2]
    rows = F.interpolate(logits, size=(in_h, out_w), mode="bilinear", align_corners=align_corners)
    row0, row1, weight0, weight1 = (
        t.to(logits.device) for t in _source_rows(in_h, out_h, align_corners)
    )
    weight0, weight1 = weight0.to(logits.dtype)[:, None], weight1.to(logits.dtype)[:, None]
    return _BandedUpsampledCrossEntropy.apply(
        rows, targets, row0, row1, weight0, weight1, ignore_value
    )
