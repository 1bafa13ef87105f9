"""Registry of transformer decoders (the `predictor` of the Mask2Former head) and its builder."""

from torch import nn

from detectron2.utils.registry import Registry

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for transformer decoders, which turn multi-scale pixel-decoder features and per-pixel
mask embeddings into class logits and mask logits per query.

The registered object is called with `cfg`, `in_channels` and `mask_classification`.
"""


def build_transformer_decoder(cfg, in_channels: int, mask_classification: bool = True) -> nn.Module:
    """
    Build the transformer decoder named by `cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME`.

    Args:
        cfg (CfgNode): config with the semask-d2 keys.
        in_channels (int): channels of the multi-scale features given to the decoder.
        mask_classification (bool): predict class logits besides the masks.
    Returns:
        nn.Module: the decoder.
    """
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)
