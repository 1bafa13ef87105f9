"""The dataset-mapper registry and its builder."""

from typing import Callable

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

__all__ = ["DATASET_MAPPER_REGISTRY", "build_dataset_mapper"]

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Registry for dataset mappers, chosen by ``cfg.INPUT.DATASET_MAPPER_NAME``.

Each entry is called as ``entry(cfg, is_train)`` and returns a callable that maps one
detectron2 dataset dict to a model input dict, for training or for inference.
"""


def build_dataset_mapper(cfg: CfgNode, is_train: bool) -> Callable:
    """
    Build the dataset mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``.

    Args:
        cfg (CfgNode): the config.
        is_train (bool): training mapper (augmentations, labels) or inference mapper.

    Returns:
        callable: dict -> dict, for ``build_detection_{train,test}_loader(cfg, mapper=...)``.
    """
    return DATASET_MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)(cfg, is_train)
