"""Deployment: SeMask models as single-image graphs, exported to ONNX (``tools/export_model.py``)."""

from .onnx_export import ExportError, compare_sem_seg, export_onnx, onnxruntime_session
from .sem_seg_graph import SemSegGraph, build_sem_seg_graph
