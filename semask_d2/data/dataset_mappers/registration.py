"""
Registry entries of the training mappers: each official mapper name builds its training mapper,
or the shared inference mapper (:class:`SemanticTestDatasetMapper`, image only) when
``is_train`` is False.
"""

from typing import Callable

from detectron2.config import CfgNode

from ..build import DATASET_MAPPER_REGISTRY
from .semantic_test_dataset_mapper import SemanticTestDatasetMapper

__all__ = ["register_training_mapper"]


def register_training_mapper(name: str) -> Callable[[type], type]:
    """
    Class decorator: register the entry `name` (``INPUT.DATASET_MAPPER_NAME``) in
    ``DATASET_MAPPER_REGISTRY``, which builds the decorated class as ``cls(cfg, is_train=True)``
    for training and :class:`SemanticTestDatasetMapper` for inference.

    Args:
        name (str): the official mapper name, e.g. "mask_former_panoptic".

    Returns:
        callable: the decorator, which returns the class unchanged.
    """

    def register(mapper_class: type) -> type:
        def entry(cfg: CfgNode, is_train: bool) -> Callable:
            if is_train:
                return mapper_class(cfg, is_train=True)
            return SemanticTestDatasetMapper(cfg)

        entry.__name__ = entry.__qualname__ = name
        entry.__doc__ = (
            f'Registry entry "{name}": {mapper_class.__name__} for training, '
            "SemanticTestDatasetMapper for inference."
        )
        DATASET_MAPPER_REGISTRY.register(entry)
        return mapper_class

    return register
