"""When the CPU inference paths of semask-d2 apply. Written for semask-d2."""

import torch

__all__ = ["capturing_graph", "cpu_fast_path", "needs_grad"]


def capturing_graph() -> bool:
    """
    True while a graph is captured: ``torch.jit.trace`` (fvcore's flop counting),
    ``torch.export`` and the dynamo ONNX exporter, torch.compile. CPU fast paths step aside then,
    so that graphs hold the plain ops: the ones flop handles count and exporters know.
    """
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.compiler.is_compiling()


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an op on `tensors`: grad mode on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def cpu_fast_path(*tensors: torch.Tensor) -> bool:
    """
    Whether computing on `tensors` may take a CPU inference path (the deformable-attention
    gather, oneDNN linear layers, separable 2x resizing): all on the CPU, none needing a
    gradient, and no graph being captured. Training, GPUs and traces run the plain ops.
    """
    on_cpu = all(t.device.type == "cpu" for t in tensors)
    return on_cpu and not needs_grad(*tensors) and not capturing_graph()
