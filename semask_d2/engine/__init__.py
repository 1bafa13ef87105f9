"""
Training and launch support: device-generic trainer, atomic and strict checkpoints, config
defaults fitted to the machine, user errors.
"""

from .checkpoint import AtomicDetectionCheckpointer
from .console import cut_long_console_lines
from .defaults import DefaultTrainer, create_ddp_model
from .machine import cpu_threads_per_process, fit_config_to_machine
from .user_errors import ConfigError, NonFiniteLossError, merge_config, user_error_message
from .weights import StrictCheckpointer, WeightsError, build_checkpointer

__all__ = [
    "AtomicDetectionCheckpointer",
    "ConfigError",
    "DefaultTrainer",
    "NonFiniteLossError",
    "StrictCheckpointer",
    "WeightsError",
    "build_checkpointer",
    "cpu_threads_per_process",
    "create_ddp_model",
    "cut_long_console_lines",
    "fit_config_to_machine",
    "merge_config",
    "user_error_message",
]
