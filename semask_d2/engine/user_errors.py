"""
Errors caused by the user's input (config or data), reported as one line instead of a traceback.

Such an error can reach the top of ``train_net.py`` in three forms: raised directly; re-raised
by a DataLoader worker, whose message is the worker's whole traceback; or re-raised by
``launch``'s process spawning as a ``ProcessRaisedException`` holding a rank's traceback. In
each, the original "module.ErrorType: message" is the last line, which is what we extract.
"""

import logging
import re
from typing import List, Optional

import yaml
from torch.multiprocessing import ProcessRaisedException

from detectron2.config import CfgNode

from ..data.errors import DatasetError
from .weights import WeightsError

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "USER_ERRORS",
    "merge_config",
    "user_error_message",
]


class ConfigError(ValueError):
    """A config file or command-line override that cannot be merged; one-line message."""


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss became NaN or infinite; one-line message."""


# Exception types whose message is meant for the user as it is.
USER_ERRORS = (ConfigError, DatasetError, WeightsError, NonFiniteLossError)
_LAST_LINE = re.compile(r"^(?:[\w.]+\.)?(?:%s): (.*)$" % "|".join(e.__name__ for e in USER_ERRORS))


def merge_config(cfg: CfgNode, config_file: str, opts: List[str]) -> None:
    """
    Merge a YAML file and ``KEY VALUE`` overrides into `cfg`, turning yacs/YAML failures
    (missing file, unknown key, type mismatch, odd override list, bad YAML) into ConfigError.
    """
    try:
        if config_file:
            cfg.merge_from_file(config_file)
        cfg.merge_from_list(opts)
    except (AssertionError, KeyError, ValueError, OSError, yaml.YAMLError) as e:
        # KeyError's str() adds quotes; YAML errors span several lines.
        detail = " ".join(str(e.args[0] if isinstance(e, KeyError) else e).split())
        raise ConfigError(f"{config_file or 'command line'}: {detail}") from e


def user_error_message(exc: BaseException) -> Optional[str]:
    """
    Args:
        exc (BaseException): an exception that reached the top level.

    Returns:
        str or None: the one-line message of the user error inside `exc`, or None when `exc`
        is not (and does not wrap) one of USER_ERRORS.
    """
    if not isinstance(exc, USER_ERRORS + (ProcessRaisedException,)):
        return None
    lines = str(exc).strip().splitlines()
    match = _LAST_LINE.match(lines[-1]) if lines else None
    if match:
        return match.group(1)
    return None if isinstance(exc, ProcessRaisedException) else " ".join(lines)


class _HideUserErrorTracebacks(logging.Filter):
    """Drops detectron2's "Exception during training" traceback log for user errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], USER_ERRORS))


_FILTER = _HideUserErrorTracebacks()


def hide_user_error_tracebacks() -> None:
    """Install the filter on detectron2's training-loop logger (idempotent)."""
    logging.getLogger("detectron2.engine.train_loop").addFilter(_FILTER)
