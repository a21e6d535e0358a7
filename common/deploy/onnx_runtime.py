"""Running a bundle's exported ``models/model.onnx`` with onnxruntime inside the MONAI bundle workflow.

``configs/inference_onnx.json`` (loaded on top of ``inference.json``) replaces ``network`` with
``OnnxNetwork``: a ``torch.nn.Module`` that hands the input batch to an onnxruntime ``InferenceSession``
(CPU execution provider) and returns its output as the same tensor type, so the bundle's preprocessing,
inferer, post-processing and mask writing run unchanged. ``models/model.onnx`` is made by
``python scripts/export_bundle.py <bundle> --onnx --in-place`` (or ``python -m common.deploy.onnx_export .``
from inside a bundle folder, which works in an unpacked zip too); its record ``models/model.onnx.json`` names the
``model.pt`` it came from, and a model.onnx exported from another model.pt is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from common.utils.io import file_digest


def export_hint(ckpt_file: str | Path | None) -> str:
    """How to write ``models/model.onnx`` for the bundle of ``ckpt_file`` (``models/model.pt``)."""
    bundle = Path(ckpt_file).resolve().parent.parent if ckpt_file else "<bundle>"
    return (
        f"python scripts/export_bundle.py {bundle} --onnx --in-place (repository), "
        "or python -m common.deploy.onnx_export . from inside the bundle folder (unpacked zip)"
    )


def record_path(onnx_file: str | Path) -> Path:
    """The parity record written next to an exported model: ``model.onnx.json``."""
    onnx_file = Path(onnx_file)
    return onnx_file.with_name(onnx_file.name + ".json")


def onnx_problem(onnx_file: str | Path, ckpt_file: str | Path | None = None) -> str | None:
    """Why ``onnx_file`` cannot serve ``ckpt_file``'s bundle (missing, or exported from another model.pt), or None."""
    onnx_file = Path(onnx_file)
    if not onnx_file.is_file():
        return f"{onnx_file} is missing: write it with {export_hint(ckpt_file)}"
    record = record_path(onnx_file)
    if ckpt_file is None or not record.is_file() or not Path(ckpt_file).is_file():
        return None
    exported_from = json.loads(record.read_text()).get("model_pt_sha256")
    if exported_from and exported_from != file_digest(ckpt_file):
        hint = export_hint(ckpt_file)
        return f"{onnx_file} was exported from another {Path(ckpt_file).name} (sha256 differs): export it again: {hint}"
    return None


def ort_session(onnx_file: str | Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session; ``threads`` > 0 fixes the intra-op thread count (0: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no per-session optimiser notices in the bundle's log
    return ort.InferenceSession(str(onnx_file), sess_options=options, providers=["CPUExecutionProvider"])


class OnnxNetwork(torch.nn.Module):
    """``network`` for the bundle configs: forward runs ``onnx_file`` in onnxruntime on the CPU.

    Stops the bundle (``SystemExit``, one line naming the file and how to make it) when the file is missing
    or its record says it was exported from another ``ckpt_file``. The output has the input's type, device
    and metadata (a MONAI ``MetaTensor`` in, one out), as a torch network's would.
    """

    def __init__(self, onnx_file: str | Path, ckpt_file: str | Path | None = None, threads: int = 0) -> None:
        super().__init__()
        problem = onnx_problem(onnx_file, ckpt_file)
        if problem:
            raise SystemExit(f"error: {problem}")
        self.onnx_file = str(onnx_file)
        self.session = ort_session(onnx_file, threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's first output for the batch ``x`` (N, C, H, W), computed by onnxruntime."""
        import numpy as np
        from monai.utils import convert_to_dst_type, convert_to_numpy

        out = self.session.run(None, {self.input_name: convert_to_numpy(x, dtype=np.float32)})[0]
        return convert_to_dst_type(out, x, dtype=torch.float32)[0]
