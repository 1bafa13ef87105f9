"""
A console that stays readable: lines over a length limit are cut on the terminal, while the log
files keep them whole. detectron2 logs a few very long lines (the PyTorch build settings in the
environment report are over 2,000 characters).
"""

import logging

__all__ = ["MAX_CONSOLE_LINE", "cut_long_console_lines"]

MAX_CONSOLE_LINE = 1000


class _CutLongLines(logging.Formatter):
    def __init__(self, inner: logging.Formatter, limit: int):
        super().__init__()
        self.inner = inner
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        lines = self.inner.format(record).split("\n")
        return "\n".join(
            (
                line
                if len(line) <= self.limit
                else line[: self.limit - 40]
                + f" ... [{len(line) - self.limit + 40} characters cut]"
            )
            for line in lines
        )


def cut_long_console_lines(logger: logging.Logger, limit: int = MAX_CONSOLE_LINE) -> None:
    """
    Cut console lines of `logger` (its stream handlers, not its log files) to `limit`
    characters. Idempotent.
    """
    for handler in logger.handlers:
        is_console = type(handler) is logging.StreamHandler
        if is_console and not isinstance(handler.formatter, _CutLongLines):
            handler.setFormatter(_CutLongLines(handler.formatter or logging.Formatter(), limit))
