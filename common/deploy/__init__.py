"""Deployment: DICOM SEG output and model-zoo packing and unpacking."""

from common.deploy import dicom_seg, zoo

__all__ = ["dicom_seg", "zoo"]
