"""
fvcore operator handles for the ops SeMask models spend time in that fvcore does not count.

fvcore counts one fused multiply-add as one flop (MACs reported as FLOPs) for matrix products
and convolutions, about 5 per element for norms and 4 per output element for bilinear
upsampling and ``grid_sampler``; elementwise ops are not counted. The handles here follow that
convention:

* ``aten::scaled_dot_product_attention`` (Swin windows, semantic attention, Mask2Former's
  attention layers): the two products Q K^T and softmax(.) V; softmax, scale and mask additions
  are elementwise and not counted, as detectron2 leaves ``aten::softmax`` out.
* ``aten::baddbmm`` (the value projection of multi-scale deformable attention, and
  ``nn.MultiheadAttention`` with an additive mask): the batched product; the added term is not.
* ``torchvision::deform_conv2d`` (modulated deformable convolution of the FaPN pixel decoders):
  the convolution as fvcore counts a dense one, plus 4 per sampled input value for the bilinear
  sampling (fvcore's ``grid_sampler`` rate); the mask modulation is elementwise.
* ``aten::addcmul`` / ``aten::addcmul_`` (the attention-weighted sum of deformable attention
  samples): one fused multiply-add per output element.

``aten::einsum`` (mask logits ``bqc,bchw->bqhw``, semantic inference ``qc,qhw->chw``) and
``aten::grid_sampler`` (deformable attention) keep fvcore's own handles, which count them as
above; ``tests/test_analyze_model.py`` checks every one against hand counts.
"""

from typing import Any, List

from fvcore.nn.jit_handles import (
    bmm_flop_jit,
    conv_flop_count,
    elementwise_flop_counter,
    generic_activation_jit,
    get_shape,
)

__all__ = [
    "FLOP_HANDLES",
    "ACTIVATION_HANDLES",
    "UNCOUNTED_ELEMENTWISE_OPS",
    "sdpa_flop_jit",
    "baddbmm_flop_jit",
    "deform_conv2d_flop_jit",
]

# fvcore's rate for bilinear sampling: 4 weighted corners per sampled value.
_BILINEAR_MACS = 4


def _numel(shape: List[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """
    ``scaled_dot_product_attention(q, k, v)`` with q (..., L, E), k (..., S, E), v (..., S, Ev)
    and output (..., L, Ev), batch dimensions broadcast: (... x L) x S x E for Q K^T plus
    (... x L x Ev) x S for the weighted sum of values.
    """
    key_shape = get_shape(inputs[1])
    out_shape = get_shape(outputs[0])
    queries = _numel(out_shape[:-1])  # broadcast batch x L
    keys, key_dim = key_shape[-2], key_shape[-1]
    return queries * keys * key_dim + _numel(out_shape) * keys


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``baddbmm(input, batch1 (B, N, M), batch2 (B, M, P))``: B x N x M x P, as ``bmm``."""
    return bmm_flop_jit(inputs[1:3], outputs)


def deform_conv2d_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """
    ``torchvision::deform_conv2d(input (N, Cin, H, W), weight (Cout, Cin / groups, kh, kw),
    offset, mask, bias, ...)`` with output (N, Cout, Ho, Wo): the dense convolution count
    N x Cout x Cin / groups x kh x kw x Ho x Wo, plus 4 x N x Cin x kh x kw x Ho x Wo for the
    bilinear sampling of every input value the kernel reads.
    """
    x_shape, w_shape = get_shape(inputs[0]), get_shape(inputs[1])
    out_shape = get_shape(outputs[0])
    conv = conv_flop_count(x_shape, w_shape, out_shape)
    kernel_points = w_shape[2] * w_shape[3]
    samples = out_shape[0] * x_shape[1] * kernel_points * out_shape[2] * out_shape[3]
    return conv + _BILINEAR_MACS * samples


# Operator name -> fvcore flop handle, for the ops above.
FLOP_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::baddbmm": baddbmm_flop_jit,
    "torchvision::deform_conv2d": deform_conv2d_flop_jit,
    "aten::addcmul": elementwise_flop_counter(0, 1),
    "aten::addcmul_": elementwise_flop_counter(0, 1),
}

# Activations (fvcore counts the outputs of matrix products and convolutions): the same ops.
ACTIVATION_HANDLES = {
    "aten::scaled_dot_product_attention": generic_activation_jit(),
    "aten::baddbmm": generic_activation_jit(),
    "torchvision::deform_conv2d": generic_activation_jit("conv"),
}

# Elementwise, comparison and data-movement ops the SeMask models run that neither fvcore nor
# detectron2 lists: not counted under the multiply-add convention. The analysis tool still lists
# them, apart from ops that have no handle at all.
UNCOUNTED_ELEMENTWISE_OPS = frozenset(
    {
        "aten::__iand__",
        "aten::all",
        "aten::cos",
        "aten::feature_dropout",
        "aten::fill_",
        "aten::gelu",
        "aten::gelu_",
        "aten::index_fill_",
        "aten::index_select",
        "aten::lt",
        "aten::ne",
        "aten::pad",
        "aten::pow",
        "aten::sin",
        "aten::unflatten",
        "aten::where",
    }
)
