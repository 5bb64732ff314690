"""Thyroid nodules on ultrasound as DICOM Segmentations, one per analysed image (frame).

One BINARY segment per nodule, on the source frame's own pixel grid (``USNodule.mask`` placed
at ``USNodule.box``), so that a viewer overlays it on the image it was drawn on.

DICOM choices
-------------
* One SEG per analysed image with nodules, not one per study.  B-mode images have no Frame of
  Reference, and a SEG without one has no plane positions: each frame says which source frame
  it lies on through its Derivation Image Sequence only.  highdicom 0.28 builds such a SEG for
  exactly one single-frame source ("Only a single frame is supported when the source image has
  no Frame of Reference UID"), and a SEG has one Rows x Columns while a study's images need not
  share theirs.  All SEGs of a study share one series (:data:`SEG_SERIES_NUMBER`); Instance
  Number follows the order of ``USResults.images``.
* A frame of a multi-frame source (a cine clip): highdicom is given a header-only stand-in of
  the clip that looks like a single-frame US Image (no Number of Frames); the finished SEG's
  references are then pointed back at the clip (its SOP Class UID and the Referenced Frame
  Number, in the Source Image Sequence and in every frame's Derivation Image Sequence).
  highdicom builds everything else; the tests read the result back with highdicom
  (``get_pixels_by_source_frame``) and check it with dciodvfy.
* Segment numbers run 1..k within each SEG (highdicom requires it); the study-wide nodule
  index ``n`` is in the Segment Label and Tracking ID "Nodule <n>", and the Tracking UID of
  :func:`tracking` is the one the SR's measurement group of the nodule carries.
* Segment description: category (49755003, SCT, "Morphologically abnormal structure"), type
  (27925004, SCT, "Nodule"), anatomic region (69748006, SCT, "Thyroid structure").  Outlines
  from the node's model: algorithm AUTOMATIC with the segmentation model's Algorithm
  Identification.  Outlines copied from an ROI the site sent (``outline_source == "site
  SEG"``): algorithm MANUAL (a person drew it; the node only copied it), no algorithm
  identification, Segment Description "outline from the site's SEG".  They are re-emitted so
  that every nodule the SR measures has its segment next to the others.
* Patient Orientation (Type 2C: required without a Frame of Reference) is the source's, empty
  when the source has none; Content Label :data:`CONTENT_LABEL`; Series Description "AI thyroid
  US nodules SEG" with the DEMO prefix for demo models.
* UIDs derive from the study, every analysed image and the segmentation model (the Series
  Instance UID) and the image and frame (the SOP Instance UID), so a re-run replaces.
  Explicit VR Little Endian; every time stamp from ``content_datetime``; the Dimension
  Organization UID derived: the same input gives a byte-identical file.
"""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Sequence
from typing import Final

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from workers.encode import codes as thy_codes
from workers.encode.common import (
    DEFAULT_MANUFACTURER,
    combined_model,
    number_of_frames,
    pin_datetimes,
    processing_equipment,
    select_source,
    series_description,
)
from workers.encode.seg import pin_dimension_organization
from workers.encode.uids import (
    ObjectKind,
    OutputUIDs,
    derive_uid,
    device_uid,
    lesion_tracking_uid,
    output_uids,
)
from workers.pipelines.results import ModelInfo, USImageUsed, USNodule, USResults

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER: Final[int] = 9903
SEG_SERIES_BASE: Final[str] = "AI thyroid US nodules SEG"
CONTENT_LABEL: Final[str] = "THYROID_NODULES"
OUTLINE_MODEL: Final[str] = "model"
OUTLINE_SITE: Final[str] = "site SEG"
SITE_OUTLINE_DESCRIPTION: Final[str] = "outline from the site's SEG"
US_IMAGE_STORAGE: Final[str] = "1.2.840.10008.5.1.4.1.1.6.1"


def image_key(image: USImageUsed) -> tuple[str, int]:
    """(SOP Instance UID, frame number or 0): one analysed image."""
    return image.source.sop_instance_uid, image.source.frame_number or 0


def us_model(results: USResults) -> ModelInfo:
    """One identity for the US outputs: the segmentation model and the scorers that ran.

    Used for UIDs, the SR's device observer, the Series Descriptions and the DEMO marking
    (demo when any of the models is).
    """
    model = results.segmentation_model
    for other in (results.malignancy_model, results.lvlnm_model):
        if other is not None:
            model = combined_model(model, other)
    return model


def check_nodules(results: USResults) -> None:
    """Check that the nodules can be encoded: indices 1..N, masks in their analysed images.

    Raises
    ------
    ValueError
        If indices are not 1..N in order, a nodule's image is not among ``results.images``,
        its outline source is unknown, or its mask is empty, not its box's shape, or outside
        the frame.
    """
    indices = [nodule.index for nodule in results.nodules]
    if indices != list(range(1, len(indices) + 1)):
        raise ValueError(f"nodule indices must be 1..N in order, got {indices}")
    analysed = {image_key(image) for image in results.images}
    for nodule in results.nodules:
        if image_key(nodule.image) not in analysed:
            raise ValueError(f"nodule {nodule.index}: its image is not among the images analysed")
        if nodule.outline_source not in (OUTLINE_MODEL, OUTLINE_SITE):
            raise ValueError(
                f"nodule {nodule.index}: unknown outline source {nodule.outline_source!r}"
            )
        r0, c0, r1, c1 = nodule.box
        if nodule.mask.shape != (r1 - r0, c1 - c0) or not np.any(nodule.mask):
            raise ValueError(
                f"nodule {nodule.index}: mask must be a non-empty array of the box's shape"
            )
        if r0 < 0 or c0 < 0 or r1 > nodule.image.rows or c1 > nodule.image.columns:
            raise ValueError(
                f"nodule {nodule.index}: box {nodule.box} outside the frame "
                f"({nodule.image.rows}, {nodule.image.columns})"
            )


def tracking(results: USResults, nodule: USNodule) -> tuple[str, str]:
    """Tracking ID and Tracking UID of a nodule, as the SEG and the SR both write them."""
    model = results.segmentation_model
    uid = lesion_tracking_uid(
        results.study_instance_uid,
        nodule.image.source.series_instance_uid,
        model.name,
        model.version,
        nodule.index,
    )
    return f"Nodule {nodule.index}", uid


def image_source(image: USImageUsed, sources: Sequence[pydicom.Dataset]) -> pydicom.Dataset:
    """The source dataset of an analysed image, checked for size and frame number.

    Raises
    ------
    ValueError
        If the dataset is missing, lies in another study or series, its size differs from the
        image's, or the frame number is missing (multi-frame) or out of range.
    """
    ds = select_source(sources, image.source)
    if (int(ds.Rows), int(ds.Columns)) != (image.rows, image.columns):
        raise ValueError(
            f"source {ds.SOPInstanceUID} is {ds.Rows} x {ds.Columns}, "
            f"the results say {image.rows} x {image.columns}"
        )
    frames = number_of_frames(ds)
    frame = image.source.frame_number
    if frame is None and frames > 1:
        raise ValueError(
            f"source {ds.SOPInstanceUID} has {frames} frames but the results name none"
        )
    if frame is not None and not 1 <= frame <= frames:
        raise ValueError(f"frame {frame} outside 1..{frames} of {ds.SOPInstanceUID}")
    return ds


def referenced_frame(image: USImageUsed, ds: pydicom.Dataset) -> int | None:
    """The frame number a reference to the image carries: set for multi-frame IODs only."""
    return (image.source.frame_number or 1) if "NumberOfFrames" in ds else None


def _algorithm(model: ModelInfo, manufacturer: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=thy_codes.ARTIFICIAL_INTELLIGENCE,
        version=model.version,
        source=manufacturer,
        parameters={"weights sha256": model.weights_sha256},
    )


def _segment(
    results: USResults, nodule: USNodule, number: int, manufacturer: str
) -> hd.seg.SegmentDescription:
    tracking_id, tracking_uid = tracking(results, nodule)
    site = nodule.outline_source == OUTLINE_SITE
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=f"Nodule {nodule.index}",
        segmented_property_category=thy_codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=thy_codes.NODULE,
        algorithm_type=(
            hd.seg.SegmentAlgorithmTypeValues.MANUAL
            if site
            else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        ),
        algorithm_identification=(
            None if site else _algorithm(results.segmentation_model, manufacturer)
        ),
        tracking_uid=tracking_uid,
        tracking_id=tracking_id,
        anatomic_regions=[copy.deepcopy(thy_codes.THYROID_STRUCTURE)],
    )
    if site:
        description.SegmentDescription = SITE_OUTLINE_DESCRIPTION
    return description


def _pixel_array(nodules: Sequence[USNodule], rows: int, columns: int) -> np.ndarray:
    """(1, rows, columns, segments) bool: each nodule's mask placed at its box."""
    array: np.ndarray = np.zeros((1, rows, columns, len(nodules)), dtype=bool)
    for s, nodule in enumerate(nodules):
        r0, c0, r1, c1 = nodule.box
        array[0, r0:r1, c0:c1, s] = nodule.mask.astype(bool)
    return array


def _single_frame_stand_in(ds: pydicom.Dataset) -> Dataset:
    """Header of a multi-frame US image as highdicom accepts it: one frame, US Image class."""
    stand_in = Dataset()
    for element in ds:  # copies: setting an attribute changes the element in place
        if element.keyword not in ("PixelData", "NumberOfFrames", "FrameIncrementPointer"):
            stand_in.add(copy.deepcopy(element))
    stand_in.SOPClassUID = US_IMAGE_STORAGE
    return stand_in


def _refer_to_frame(seg: pydicom.Dataset, ds: pydicom.Dataset, frame: int) -> None:
    """Point the SEG's source references (built from the stand-in) at the clip's frame."""

    def retarget(item: Dataset, with_frame: bool) -> Dataset:
        if item.ReferencedSOPInstanceUID != ds.SOPInstanceUID:
            raise ValueError(f"the SEG references {item.ReferencedSOPInstanceUID}, not the source")
        out = copy.deepcopy(item)  # highdicom shares some items between sequences
        out.ReferencedSOPClassUID = ds.SOPClassUID
        if with_frame:
            out.ReferencedFrameNumber = frame
        return out

    # Source Image Sequence (General Image module): the frame the SEG was derived from
    seg.SourceImageSequence = [retarget(i, True) for i in seg.get("SourceImageSequence", [])]
    # Common Instance Reference module: instance level only (no frame numbers there)
    for series in seg.get("ReferencedSeriesSequence", []):
        series.ReferencedInstanceSequence = [
            retarget(i, False) for i in series.get("ReferencedInstanceSequence", [])
        ]
    for group in seg.PerFrameFunctionalGroupsSequence:
        for derivation in group.get("DerivationImageSequence", []):
            derivation.SourceImageSequence = [
                retarget(i, True) for i in derivation.get("SourceImageSequence", [])
            ]


def _encode_image(
    results: USResults,
    image: USImageUsed,
    nodules: Sequence[USNodule],
    ds: pydicom.Dataset,
    *,
    uids: OutputUIDs,
    instance_number: int,
    content_datetime: datetime.datetime,
    manufacturer: str,
    software_version: str,
) -> hd.seg.Segmentation:
    model = results.segmentation_model
    frame = referenced_frame(image, ds)
    source = ds if frame is None else _single_frame_stand_in(ds)
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=_pixel_array(nodules, image.rows, image.columns),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _segment(results, nodule, number, manufacturer)
            for number, nodule in enumerate(nodules, start=1)
        ],
        series_instance_uid=uids.series_instance_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=model.name,
        software_versions=software_version,
        device_serial_number=device_uid(model.name, model.version, model.weights_sha256),
        omit_empty_frames=True,
        content_label=CONTENT_LABEL,
        content_description=f"Thyroid nodules, {model.name} {model.version}"[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[
            processing_equipment(
                model,
                manufacturer=manufacturer,
                software_version=software_version,
                content_datetime=content_datetime,
            )
        ],
        series_description=series_description(SEG_SERIES_BASE, us_model(results)),
        content_date=content_datetime.date(),
        content_time=content_datetime.time(),
    )
    if frame is not None:
        _refer_to_frame(seg, ds, frame)
    _add_pixel_measures(seg, image)
    seg.PatientOrientation = ds.get("PatientOrientation", "") or ""
    pin_datetimes(seg, content_datetime)
    pin_dimension_organization(seg, derive_uid("dimension-organization", uids.sop_instance_uid))
    return seg


def _add_pixel_measures(seg: hd.seg.Segmentation, image: USImageUsed) -> None:
    """A Pixel Measures item in the shared functional groups: the B-mode region's pixel size.

    The SEG IOD asks for it only with a frame of reference (a US image has none), but viewers
    read it unconditionally (OHIF 3.13 fails to open a SEG without it) and highdicom reads it
    only with both Pixel Spacing and Slice Thickness. A B-mode image has no slice thickness of
    its own: the nominal value written is the pixel's row size. An uncalibrated image gets no
    item (its pixels have no physical size to state).
    """
    if image.spacing_mm is None:
        return
    measures = Dataset()
    measures.PixelSpacing = [format_ds(image.spacing_mm[0]), format_ds(image.spacing_mm[1])]
    measures.SliceThickness = format_ds(image.spacing_mm[0])
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" not in shared:
        shared.PixelMeasuresSequence = [measures]
    if "PlaneOrientationSequence" not in shared:
        orientation = Dataset()
        orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        shared.PlaneOrientationSequence = [orientation]
    for item in seg.PerFrameFunctionalGroupsSequence:
        if "PlanePositionSequence" not in item:
            position = Dataset()
            position.ImagePositionPatient = [0, 0, 0]
            item.PlanePositionSequence = [position]


def format_ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    return f"{value:.10g}"[:16]


def encode_us_segs(
    results: USResults,
    sources: Sequence[pydicom.Dataset],
    *,
    content_datetime: datetime.datetime,
    software_version: str,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> list[hd.seg.Segmentation]:
    """Encode the US pipeline's nodules as BINARY Segmentations, one per image with nodules.

    Parameters
    ----------
    results : USResults
        The pipeline's results; nodule masks are boxes on their source frame.
    sources : Sequence[pydicom.Dataset]
        The study's datasets; every image a nodule lies on must be among them (pixel data
        is not read).
    content_datetime : datetime.datetime
        Content Date/Time (and every other time stamp).
    software_version : str
        Version of the node's software.
    manufacturer : str, optional
        Manufacturer of the node.

    Returns
    -------
    list of highdicom.seg.Segmentation
        In the order of ``results.images``; empty when there is no nodule.

    Raises
    ------
    ValueError
        If nodule indices are not 1..N, a mask is empty, misshapen or outside its frame, an
        outline source is unknown, or a source is missing or does not match its image.
    """
    if not results.nodules:
        logger.info("no nodule: no US SEG")
        return []
    check_nodules(results)
    model = results.segmentation_model
    analysed = [image.source.sop_instance_uid for image in results.images]
    out: list[hd.seg.Segmentation] = []
    for image in results.images:
        nodules = [n for n in results.nodules if image_key(n.image) == image_key(image)]
        if not nodules:
            continue
        ds = image_source(image, sources)
        sop_uid, frame = image_key(image)
        uids = output_uids(
            ObjectKind.SEG,
            results.study_instance_uid,
            analysed,
            model.name,
            model.version,
            instance_key=f"image={sop_uid}#{frame}",
        )
        out.append(
            _encode_image(
                results,
                image,
                nodules,
                ds,
                uids=uids,
                instance_number=len(out) + 1,
                content_datetime=content_datetime,
                manufacturer=manufacturer,
                software_version=software_version,
            )
        )
    logger.info(
        "encoded %d US SEG(s): %d nodule segment(s), model %s %s",
        len(out),
        len(results.nodules),
        model.name,
        model.version,
    )
    return out
