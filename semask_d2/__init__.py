"""SeMask for Detectron2. Importing the package registers its models and datasets."""

from . import data  # noqa: F401  (registers datasets)
from .config import add_semask_config
from .modeling import D2SeMaskSwinTransformer, SemanticPriorLoss

__version__ = "0.1.0"
