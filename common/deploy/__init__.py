"""Deployment: writing predicted masks (PNG/NIfTI, DICOM SEG), model-zoo packing and unpacking, and serving
with MONAI Label (``label_app``)."""

from common.deploy import dicom_seg, label_app, masks, zoo

__all__ = ["dicom_seg", "label_app", "masks", "zoo"]
