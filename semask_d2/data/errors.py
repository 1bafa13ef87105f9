"""The exception raised for bad dataset files, with a one-line message for the command line."""

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """
    A dataset file or folder is missing or unusable.

    The message is a single line that names the offending file or folder and says how to fix it,
    so that a training script can print it as its last line and exit with a non-zero status.
    """
