"""Deployment: SeMask models as one-image graphs, exported to ONNX (`tools/export_model.py`)."""

from .errors import ExportError
from .onnx_export import (
    check_sample_size,
    compare_sem_seg,
    export_onnx,
    onnxruntime_session,
)
from .sem_seg_graph import SemSegGraph, build_sem_seg_graph
