"""Training and launch support: device-generic trainer, atomic checkpoints, user errors."""

from .checkpoint import AtomicDetectionCheckpointer
from .defaults import DefaultTrainer, create_ddp_model
from .user_errors import ConfigError, merge_config, user_error_message

__all__ = [
    "AtomicDetectionCheckpointer",
    "ConfigError",
    "DefaultTrainer",
    "create_ddp_model",
    "merge_config",
    "user_error_message",
]
