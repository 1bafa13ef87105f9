"""
Linear layers whose float32 CPU inference runs on oneDNN. Written for semask-d2.

On CPU, ``F.linear`` hands float32 products to MKL's sgemm. The oneDNN inner product that ships
in the same PyTorch builds (``torch.ops.mkldnn._linear_pointwise``, the op torch.compile's CPU
backend emits for linear layers) is 10-25 % faster on the token-major products of the Swin
blocks and the deformable encoder: 188-216 against 152-191 GFLOP/s on two AVX-512 cores, 0.96
instead of 1.02 s for a SeMask-T Mask2Former inference at 512x512. It computes the same sums in
another order, so results agree with ``F.linear`` to float rounding.

It is used only where nothing depends on ``F.linear`` itself: float32 CPU tensors, no autograd,
no autocast, no graph capture (flop counting, export and torch.compile see ``F.linear``), and a
PyTorch built with oneDNN. Everything else, training and GPUs included, runs ``F.linear``.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .fast_path import cpu_fast_path

__all__ = ["Linear", "linear", "uses_onednn"]

_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, "_linear_pointwise"
)


def uses_onednn(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether :func:`linear` computes `x` with these parameters on oneDNN."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        _ONEDNN_LINEAR
        and cpu_fast_path(*tensors)
        and all(t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, relu: bool = False
) -> torch.Tensor:
    """
    ``F.linear(x, weight, bias)``, followed by a ReLU when `relu` (fused into the product on
    oneDNN; in place otherwise). See the module docstring for when oneDNN computes it.
    """
    if uses_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(
            x, weight, bias, "relu" if relu else "none", [], ""
        )
    y = F.linear(x, weight, bias)
    return F.relu(y, inplace=True) if relu else y


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state dict) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
