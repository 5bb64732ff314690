"""CT lung lesions as a DICOM Segmentation over the original CT geometry.

One BINARY segment per lesion (segment number = ``CTLesion.index``), frames on the source
CT's own grid, so that every viewer overlays the SEG on the images it was computed from
without resampling.

DICOM choices
-------------
* Frames: only the source slices a lesion touches, and per segment only the slices where
  that segment has voxels (highdicom's ``omit_empty_frames``): no empty frames, and a
  300-slice study costs only the lesions' slices.  A single-frame CT series passes those
  slices as ``source_images``; an Enhanced CT passes its one instance and the chosen
  frames' Plane Position items, which highdicom matches to the source frames (Derivation
  Image Sequence with Referenced Frame Number, spatial locations preserved).
* Segment description: label "Lesion <n>", category (49755003, SCT, "Morphologically
  abnormal structure"), type (14799000, SCT, "Neoplasm, metastatic"), anatomic region
  (39607008, SCT, "Lung") with laterality Right/Left as Anatomic Region Modifier,
  algorithm AUTOMATIC with the segmentation model's Algorithm Identification (family
  "Artificial Intelligence", name, version, weights checksum), Tracking ID "Lesion <n>"
  and the Tracking UID of :func:`workers.encode.uids.lesion_tracking_uid`, which the SR
  uses for the same lesion.
* Series :data:`SEG_SERIES_NUMBER`, Series Description "AI thyroid CT lesions SEG" (DEMO
  prefix for demo models), Content Label :data:`CONTENT_LABEL`; Series/SOP Instance UIDs
  derived from the study, every slice of the series used and the segmentation model
  (:mod:`workers.encode.uids`), so a re-run replaces.
* Device Serial Number: the segmentation model's device UID (the same as
  :func:`workers.encode.uids.device_uid` gives the SR): the node has no hardware serial.
* Explicit VR Little Endian; every time stamp from ``content_datetime``; the Dimension
  Organization UID (random in highdicom) derived from the SOP Instance UID: the same input
  gives a byte-identical file.
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
from highdicom.utils import get_plane_positions_of_image
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from workers.encode import codes as thy_codes
from workers.encode.common import (
    DEFAULT_MANUFACTURER,
    pin_datetimes,
    processing_equipment,
    series_description,
    series_sources,
)
from workers.encode.uids import (
    ObjectKind,
    derive_uid,
    device_uid,
    lesion_tracking_uid,
    output_uids,
)
from workers.pipelines.results import CTLesion, CTResults, CTSeriesUsed, ModelInfo

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER: Final[int] = 9903
SEG_INSTANCE_NUMBER: Final[int] = 1
SEG_SERIES_BASE: Final[str] = "AI thyroid CT lesions SEG"
CONTENT_LABEL: Final[str] = "LUNG_METS"


def laterality(side: str) -> hd.sr.CodedConcept:
    """The laterality concept of a lung side (``"right"`` or ``"left"``).

    Raises
    ------
    ValueError
        For any other side.
    """
    if side == "right":
        return thy_codes.RIGHT
    if side == "left":
        return thy_codes.LEFT
    raise ValueError(f"lesion side must be 'right' or 'left', got {side!r}")


def check_lesions(results: CTResults) -> CTSeriesUsed:
    """The series used, after checking that the lesions can be encoded as segments 1..N.

    Raises
    ------
    ValueError
        If there are lesions but no series, lesion indices are not 1..N in order, or a
        mask is not a non-empty 3D box.
    """
    if results.series is None:
        raise ValueError("lesions without the series they were found in")
    indices = [lesion.index for lesion in results.lesions]
    if indices != list(range(1, len(indices) + 1)):
        raise ValueError(f"lesion indices must be 1..N in order, got {indices}")
    for lesion in results.lesions:
        if lesion.mask.ndim != 3 or not np.any(lesion.mask):
            raise ValueError(f"lesion {lesion.index}: mask must be a non-empty 3D array")
        laterality(lesion.side)
    return results.series


def tracking(results: CTResults, series: CTSeriesUsed, lesion: CTLesion) -> tuple[str, str]:
    """Tracking ID and Tracking UID of a lesion, as the SEG and the SR both write them."""
    model = results.segmentation_model
    uid = lesion_tracking_uid(
        results.study_instance_uid,
        series.series_instance_uid,
        model.name,
        model.version,
        lesion.index,
    )
    return f"Lesion {lesion.index}", uid


def _algorithm(model: ModelInfo, manufacturer: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=thy_codes.ARTIFICIAL_INTELLIGENCE,
        version=model.version,
        source=manufacturer,
        parameters={"weights sha256": model.weights_sha256},
    )


def _segment(
    results: CTResults, series: CTSeriesUsed, lesion: CTLesion, manufacturer: str
) -> hd.seg.SegmentDescription:
    tracking_id, tracking_uid = tracking(results, series, lesion)
    description = hd.seg.SegmentDescription(
        segment_number=lesion.index,
        segment_label=f"Lesion {lesion.index}",
        segmented_property_category=thy_codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=thy_codes.METASTATIC_NEOPLASM,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(results.segmentation_model, manufacturer),
        tracking_uid=tracking_uid,
        tracking_id=tracking_id,
        anatomic_regions=[copy.deepcopy(thy_codes.LUNG)],  # a copy: the modifier goes into it
    )
    region = description.AnatomicRegionSequence[0]
    region.AnatomicRegionModifierSequence = [copy.deepcopy(laterality(lesion.side))]
    return description


def _frames(
    lesions: Sequence[CTLesion], n_slices: int, rows: int, cols: int
) -> tuple[list[int], np.ndarray]:
    """Volume slices with lesion voxels, and the stacked-segments array on them."""
    for lesion in lesions:
        k0, r0, c0 = lesion.box_origin
        nk, nr, nc = lesion.mask.shape
        if min(k0, r0, c0) < 0 or k0 + nk > n_slices or r0 + nr > rows or c0 + nc > cols:
            raise ValueError(
                f"lesion {lesion.index}: box {lesion.box_origin} + {lesion.mask.shape} "
                f"outside the volume ({n_slices}, {rows}, {cols})"
            )
    wanted = sorted(
        {
            lesion.box_origin[0] + int(dk)
            for lesion in lesions
            for dk in np.flatnonzero(lesion.mask.reshape(lesion.mask.shape[0], -1).any(axis=1))
        }
    )
    position = {k: i for i, k in enumerate(wanted)}
    array: np.ndarray = np.zeros((len(wanted), rows, cols, len(lesions)), dtype=bool)
    for s, lesion in enumerate(lesions):
        k0, r0, c0 = lesion.box_origin
        nk, nr, nc = lesion.mask.shape
        for dk in range(nk):
            plane = lesion.mask[dk].astype(bool)
            if plane.any():
                array[position[k0 + dk], r0 : r0 + nr, c0 : c0 + nc, s] |= plane
    return wanted, array


def _source_arguments(
    series: CTSeriesUsed, datasets: list[pydicom.Dataset], wanted: list[int]
) -> tuple[list[Dataset], list[hd.PlanePositionSequence] | None]:
    """``source_images`` and ``plane_positions`` for highdicom, single-frame or Enhanced CT."""
    instances = {ds.SOPInstanceUID for ds in datasets}
    if len(instances) == len(datasets):  # one single-frame instance per slice
        return [datasets[k] for k in wanted], None
    if len(instances) != 1:
        raise ValueError("the series used mixes several multi-frame instances")
    source = datasets[0]
    positions = get_plane_positions_of_image(source)
    frames = [series.slices[k].frame_number for k in wanted]
    return [source], [positions[f - 1] for f in frames if f is not None]


def pin_dimension_organization(seg: pydicom.Dataset, uid: str) -> None:
    """Replace the random Dimension Organization UID highdicom generates with ``uid``."""
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = uid


def encode_ct_seg(
    results: CTResults,
    sources: Sequence[pydicom.Dataset],
    *,
    content_datetime: datetime.datetime,
    manufacturer: str = DEFAULT_MANUFACTURER,
    software_version: str,
) -> hd.seg.Segmentation | None:
    """Encode the CT pipeline's lesions as a BINARY Segmentation over the source CT grid.

    Parameters
    ----------
    results : CTResults
        The pipeline's results; lesion masks are boxes on the source grid.
    sources : Sequence[pydicom.Dataset]
        The study's datasets; every slice of the series used must be among them
        (pixel data is not read).
    content_datetime : datetime.datetime
        Content Date/Time (and every other time stamp).
    manufacturer : str, optional
        Manufacturer of the node.
    software_version : str
        Version of the node's software.

    Returns
    -------
    highdicom.seg.Segmentation or None
        None when there is no lesion.

    Raises
    ------
    ValueError
        If lesion indices are not 1..N, a mask lies outside the volume, a slice's source
        is missing, or the lesion side is unknown.
    """
    if not results.lesions:
        logger.info("no lesion: no CT SEG")
        return None
    series = check_lesions(results)
    datasets = series_sources(series, sources)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    wanted, array = _frames(results.lesions, len(datasets), rows, cols)
    source_images, plane_positions = _source_arguments(series, datasets, wanted)
    model = results.segmentation_model
    uids = output_uids(
        ObjectKind.SEG,
        results.study_instance_uid,
        [s.sop_instance_uid for s in series.slices],
        model.name,
        model.version,
    )
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            _segment(results, series, lesion, manufacturer) for lesion in results.lesions
        ],
        series_instance_uid=uids.series_instance_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=SEG_INSTANCE_NUMBER,
        manufacturer=manufacturer,
        manufacturer_model_name=model.name,
        software_versions=software_version,
        device_serial_number=device_uid(model.name, model.version, model.weights_sha256),
        plane_positions=plane_positions,
        omit_empty_frames=True,
        content_label=CONTENT_LABEL,
        content_description=f"Lung lesions found by {model.name} {model.version}"[:64],
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[
            processing_equipment(
                model,
                manufacturer=manufacturer,
                software_version=software_version,
                content_datetime=content_datetime,
            )
        ],
        series_description=series_description(SEG_SERIES_BASE, model),
        content_date=content_datetime.date(),
        content_time=content_datetime.time(),
    )
    pin_datetimes(seg, content_datetime)
    pin_dimension_organization(seg, derive_uid("dimension-organization", uids.sop_instance_uid))
    logger.info(
        "encoded CT SEG: %d segment(s) on %d source slice(s), %d frame(s), model %s %s",
        len(results.lesions),
        len(wanted),
        int(seg.NumberOfFrames),
        model.name,
        model.version,
    )
    return seg
