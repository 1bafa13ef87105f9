"""The exception raised when a model cannot be exported, with a one-line message."""

__all__ = ["ExportError"]


class ExportError(ValueError):
    """
    The model, the sample image or the environment cannot produce or check the exported graph.

    The message is a single line naming the cause and the fix, so that ``tools/export_model.py``
    prints it as ``error: ...`` and exits with status 1.
    """
