"""Write a predicted pneumothorax mask as a DICOM Segmentation (SEG) object with highdicom.

One binary segment, "Pneumothorax" (SNOMED CT 36118008, category 49755003 Morphologically Abnormal
Structure), algorithm type AUTOMATIC, identified by the bundle's name and version. The SEG joins the
source image's study in a new series (fresh UIDs on every write, so a rerun never reuses a UID for
different content), references the source's Study/Series/SOP Instance UIDs, and has one frame on its
pixel grid (Rows x Columns): chest radiographs have no Frame of Reference, and for such sources DICOM
(PS3.3 A.51) ties each SEG pixel to a source pixel through the Derivation Image functional group.

Two quirks of real files are handled here rather than left to fail:
- sources missing Type 2 patient/study attributes (birth date, study ID, ...) get them empty, as
  Type 2 allows, because highdicom copies them unconditionally;
- highdicom 0.28.2 writes a Pixel Measures group (spacing, no slice thickness) for sources without a
  Frame of Reference, which its own reader then rejects; PS3.3 Table A.51-2 only provides Pixel
  Measures with a patient-relative Frame of Reference, so it is dropped in that case.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.utils.io import atomic_path

if TYPE_CHECKING:
    from highdicom.seg import Segmentation, SegmentDescription
    from pydicom import Dataset

SEGMENT_LABEL = "Pneumothorax"
SERIES_NUMBER = 9901  # a high number keeps derived series after the acquired ones in viewers
MANUFACTURER = "monai-ssl-seg"
TYPE2_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


class DicomSegError(ValueError):
    """A mask that cannot be written as a SEG of its source image; the message names the file."""


def read_source(path: str | Path) -> Dataset:
    """The source image's header (no pixel data), completed so that highdicom can derive from it."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    for keyword in TYPE2_ATTRIBUTES:
        if keyword not in ds:
            setattr(ds, keyword, None)  # Type 2: present and empty
    if "FrameOfReferenceUID" in ds and not {"ImagePositionPatient", "ImageOrientationPatient"} <= set(ds.dir()):
        del ds.FrameOfReferenceUID  # a projection image with no plane geometry: pixel-matched SEG
    return ds


def _short(text: str, limit: int = 64) -> str:
    """DICOM LO values hold at most 64 characters."""
    return text if len(text) <= limit else text[: limit - 1] + "~"


def segment_description(algorithm_name: str, algorithm_version: str) -> SegmentDescription:
    """The single "Pneumothorax" segment, produced automatically by the named bundle."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=_short(algorithm_name),
        family=codes.cid7162.ArtificialIntelligence,
        version=_short(algorithm_version),
        source="MONAI bundle",
    )
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Pneumothorax,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def build_segmentation(source: Dataset, mask: np.ndarray, algorithm_name: str, algorithm_version: str) -> Segmentation:
    """A binary SEG of ``mask`` (rows, cols; nonzero = pneumothorax) on the pixel grid of ``source``."""
    import highdicom as hd

    shape = (int(source.Rows), int(source.Columns))
    if mask.shape != shape:
        raise DicomSegError(f"mask shape {mask.shape} differs from the source image's {shape} (Rows, Columns)")
    with warnings.catch_warnings():  # a source PatientName without '^' is the source's business, not ours
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=(np.asarray(mask) > 0).astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment_description(algorithm_name, algorithm_version)],
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=_short(algorithm_name),
            software_versions=_short(algorithm_version),
            device_serial_number="0",
            content_label="PNEUMOTHORAX",
            content_description=_short(f"{SEGMENT_LABEL} segmentation by {algorithm_name} {algorithm_version}"),
            series_description=_short(f"{SEGMENT_LABEL} SEG ({algorithm_name} {algorithm_version})"),
            omit_empty_frames=False,  # an empty mask is a result too: always one full frame
        )
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "FrameOfReferenceUID" not in source and "PixelMeasuresSequence" in shared:
        del shared.PixelMeasuresSequence
    return seg


def write_dicom_seg(
    source_path: str | Path, mask: np.ndarray, target: str | Path, algorithm_name: str, algorithm_version: str
) -> Path:
    """Write the SEG of ``mask`` for the DICOM image at ``source_path`` to ``target`` atomically; return it."""
    try:
        seg = build_segmentation(read_source(source_path), mask, algorithm_name, algorithm_version)
    except DicomSegError as e:
        raise DicomSegError(f"{source_path}: {e}") from e
    except Exception as e:  # highdicom raises many types for sources it cannot derive from
        raise DicomSegError(f"{source_path}: cannot derive a DICOM SEG ({type(e).__name__}: {e})") from e
    target = Path(target)
    with atomic_path(target) as tmp:
        seg.save_as(str(tmp), enforce_file_format=True)
    return target
