"""Deployment: writing predicted masks (PNG/NIfTI, DICOM SEG) and model-zoo packing and unpacking."""

from common.deploy import dicom_seg, masks, zoo

__all__ = ["dicom_seg", "masks", "zoo"]
