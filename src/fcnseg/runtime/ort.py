"""onnxruntime sessions, shared by the fast path (:mod:`.fast`) and by reading exported files
(:mod:`.export`); its own module so that neither needs the other for it."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def onnx_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with full graph optimisation and ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
