"""
``SeMaskSemanticSegmentor``: the meta-architecture name of earlier semask-d2 SeMask-FPN configs,
kept so that saved configs still run. It is detectron2's :class:`SemanticSegmentor`: the prior
loss ``loss_cate`` is computed by :class:`SeMaskFPNHead`, which receives every backbone output.
"""

import logging

from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.utils.logger import log_first_n

__all__ = ["SeMaskSemanticSegmentor"]


@META_ARCH_REGISTRY.register()
class SeMaskSemanticSegmentor(SemanticSegmentor):
    """Deprecated alias of :class:`SemanticSegmentor`; warns once when built from a config."""

    @classmethod
    def from_config(cls, cfg):
        log_first_n(
            logging.WARNING,
            "MODEL.META_ARCHITECTURE 'SeMaskSemanticSegmentor' is deprecated: use detectron2's "
            "'SemanticSegmentor' (SeMaskFPNHead computes loss_cate); the model is the same.",
            n=1,
            key="message",
        )
        return super().from_config(cfg)
