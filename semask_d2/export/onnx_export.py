"""
ONNX export of a :class:`SemSegGraph` with dynamic height and width, its check, and the
comparison of ONNX Runtime with PyTorch.

The graph is captured by ``torch.export`` with symbolic H and W (an error, not a silent
specialisation, when some operation would fix them), then translated by the ONNX exporter
(``torch.onnx.export(..., dynamo=True)``). ``onnx``, ``onnxruntime`` and ``onnxscript`` come with
the ``export`` extra of the package and are imported only here, when used.
"""

from typing import Dict

import numpy as np
import torch
import torch.fx.experimental._config as fx_config
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import ExportError
from .sem_seg_graph import SemSegGraph

__all__ = [
    "DEFAULT_OPSET",
    "MIN_SIZE",
    "check_sample_size",
    "compare_sem_seg",
    "export_onnx",
    "onnxruntime_session",
]

# ONNX opset of the exported graphs: 18 is the one torch's ONNX translation emits natively
# (others pass through a version converter); 17 is the oldest with LayerNormalization.
DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "sem_seg"
# Smallest H and W the traced graph declares: at 32 or less the stride-32 maps are 1x1, and
# the backbone's `contiguous()` of such a map traces differently (a no-op instead of a copy).
# The ONNX graph has no strides: smaller images run and match too.
MIN_SIZE = 33


def _import_onnx():
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError as e:
        raise ExportError(
            f"{e.name} is not installed: pip install -e '.[export]' (onnx, onnxruntime, "
            "onnxscript)"
        ) from None
    return onnx, onnxruntime


def export_onnx(graph: SemSegGraph, sample: torch.Tensor, path: str, opset: int = DEFAULT_OPSET):
    """
    Export `graph` to the ONNX file `path` with input ``image`` (3, H, W) and output
    ``sem_seg`` (K, H, W), H and W dynamic, then check the file with ``onnx.checker``.

    Args:
        graph (SemSegGraph): the graph, in eval mode, on the CPU.
        sample (Tensor): (3, H, W) float32 example image; any size the model accepts.
        path (str): the .onnx file to write.
        opset (int): ONNX opset version (>= 17).
    """
    onnx, _ = _import_onnx()
    if opset < 17:
        raise ExportError(f"--opset {opset} is too old: the graphs need opset 17 or later")
    check_sample_size(sample)
    dims = {i: torch.export.Dim(name, min=MIN_SIZE) for i, name in ((1, "height"), (2, "width"))}
    # Math attention kernel: the fused CPU kernel lays its output out differently, and the
    # exporter's later passes, which re-run the graph with the math layout, cannot view it.
    # Size-oblivious tracing: sizes that are 1 for the sample (e.g. one window per row) are
    # traced as general sizes, instead of fixing the graph to that case.
    oblivious = fx_config.patch(backed_size_oblivious=True)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), oblivious:
        try:
            program = torch.export.export(
                graph, (sample,), dynamic_shapes={INPUT_NAME: dims}, strict=False
            )
        except torch._dynamo.exc.UserError as e:
            raise ExportError(_constraint_message(e)) from e
    with torch.no_grad():
        onnx_program = torch.onnx.export(
            program,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            verbose=False,
        )
    onnx_program.save(path)
    try:
        onnx.checker.check_model(path, full_check=True)
    except onnx.checker.ValidationError as e:
        first = " ".join(str(e).split("\n")[0].split())
        raise ExportError(
            f"onnx.checker rejects {path} at opset {opset} ({first[:200]}); operators of newer "
            "opsets need a larger --opset (DeformConv of SeMask-FaPN: 19)"
        ) from e


def check_sample_size(image: torch.Tensor) -> None:
    """Raise :class:`ExportError` unless `image` (3, H, W) is large enough to trace with."""
    if image.dim() != 3 or min(image.shape[1:]) < MIN_SIZE:
        raise ExportError(
            f"the sample image is {'x'.join(map(str, image.shape[1:]))}; tracing needs at least "
            f"{MIN_SIZE}x{MIN_SIZE}: pass a larger --sample-image"
        )


def _constraint_message(error: Exception) -> str:
    """One line for a torch.export constraint violation: the first guard that fixes H or W."""
    guards = [line.strip(" -") for line in str(error).splitlines() if "Not all values" in line]
    detail = guards[0] if guards else " ".join(str(error).split())
    return (
        f"the model cannot be exported with dynamic H, W: it branches on the image size "
        f"({detail[:300]}); rerun with TORCH_LOGS=+dynamic to see where"
    )


def onnxruntime_session(path: str, threads: int = 2):
    """An ONNX Runtime CPU session of `path` with `threads` intra-op threads."""
    _, ort = _import_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def compare_sem_seg(onnx_out: np.ndarray, torch_out: torch.Tensor) -> Dict[str, float]:
    """
    Args:
        onnx_out (ndarray): (K, H, W) ONNX Runtime ``sem_seg``.
        torch_out (Tensor): (K, H, W) PyTorch ``sem_seg``.
    Returns:
        dict: "max_abs_diff"; "within_1e-4", the fraction of values within 1e-4; "argmax_agree",
        the fraction of pixels whose top class is the same.
    """
    ref = torch_out.detach().cpu().double()
    out = torch.from_numpy(np.asarray(onnx_out)).double()
    if out.shape != ref.shape:
        raise ExportError(
            f"ONNX Runtime returned {tuple(out.shape)}, PyTorch {tuple(ref.shape)}: the graph "
            "does not follow the model"
        )
    diff = (out - ref).abs()
    return {
        "max_abs_diff": diff.max().item(),
        "within_1e-4": (diff <= 1e-4).double().mean().item(),
        "argmax_agree": (out.argmax(0) == ref.argmax(0)).double().mean().item(),
    }
