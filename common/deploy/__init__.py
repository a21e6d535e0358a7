"""Deployment: writing predicted masks (PNG/NIfTI, DICOM SEG), model-zoo packing and unpacking, onnxruntime
inference (``onnx_runtime``; the export is ``common.deploy.onnx_export``, run as ``python -m``), and serving
with MONAI Label (``label_app``)."""

from common.deploy import dicom_seg, label_app, masks, onnx_runtime, zoo

__all__ = ["dicom_seg", "label_app", "masks", "onnx_runtime", "zoo"]
