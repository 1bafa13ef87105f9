"""Whether a graph is being captured. Written for semask-d2."""

import torch

__all__ = ["capturing_graph"]


def capturing_graph() -> bool:
    """
    True while a graph is captured: ``torch.jit.trace`` (fvcore's flop counting),
    ``torch.export`` and the dynamo ONNX exporter, torch.compile. CPU fast paths step aside then,
    so that graphs hold the plain ops: the ones flop handles count and exporters know.
    """
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling()
