"""Registry of pixel decoders and its builder."""

from typing import Dict

from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder"]

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Registry for pixel decoders: modules turning backbone features into per-pixel mask features
and multi-scale maps for a mask-classification transformer decoder. The object is called with
``(cfg, input_shape)`` and must provide
``forward_features(features) -> (mask_features, transformer_encoder_features,
multi_scale_features)``.
"""


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """
    Build the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``.

    Args:
        cfg (CfgNode): a config with the semask-d2 keys.
        input_shape (dict[str, ShapeSpec]): backbone output shapes; keys the decoder does not
            read (e.g. ``res2_prior``) are allowed.
    """
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(f"Pixel decoder {name} has no forward_features method")
    return model
