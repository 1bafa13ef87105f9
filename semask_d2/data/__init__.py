"""Datasets and dataset mappers. Importing it registers the SeMask datasets (lazily)."""

from . import datasets  # noqa: F401  (registers the builtin datasets)
from .build import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from .dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
    SemanticTestDatasetMapper,
)
from .datasets import register_sem_seg_dataset
from .errors import DatasetError
