"""Dataset mappers; importing it registers them in ``DATASET_MAPPER_REGISTRY``."""

from .mask_former_semantic_dataset_mapper import MaskFormerSemanticDatasetMapper
from .semantic_test_dataset_mapper import SemanticTestDatasetMapper
