"""CT lung lesions as a TID 1500 Measurement Report (Comprehensive 3D SR).

Document layout (all built with highdicom's template classes)::

    Imaging Measurement Report (TID 1500)
      Language, Observation Context: device observer = both models as one
        device ("<seg>+<cls> <version>", UID from names, versions, checksums)
      Procedure Reported (24627-2, LN, "CT Chest")
      Image Library: the source images the groups reference (the middle slice when
        no lesion was found); every slice of the series is in the evidence
      Imaging Measurements
        per CTLesion, one Volumetric ROI group (TID 1411):
          Tracking Identifier "Cornerstone3DTools@^0.1.0:Bidirectional:Lesion <n>"
            + the Tracking UID the SEG's segment n has
          Referenced Segment: SEG instance + segment n (no frame numbers), with
            Source Image for Segmentation = the source slices (frames) of the lesion
          Finding Category (49755003, SCT), Finding (14799000, SCT, "Neoplasm,
            metastatic"), Finding Site lung + laterality right/left
          Algorithm Identification (TID 4019): the segmentation model
          Long Axis (103339001, SCT), mm, end points (SCOORD)  } in the axial source
          Short Axis (103340004, SCT), mm, end points (SCOORD) } slice through the centre
          Diameter (81827009, SCT) derivation Maximum, mm: 3D  } segmentation model
          Volume (118565006, SCT), mm3                         }
          Probability of RAI-refractory status (99THYAI), 1    } classifier model
          CODE evaluation "RAI-refractory" = Yes / No (SCT)
          TEXT evaluations: Comment "Lesion <n>", decision threshold, lesion centre
            (LPS mm), plane of the axes, series selection, disclaimer when demo
        analysed, no lesion: one Measurements group (TID 1501):
          Tracking Identifier "No lung lesion", Finding Site lung,
          Algorithm Identification (segmentation model),
          CODE evaluation "AI analysis result" = "No lung lesion found" (99THYAI),
          TEXT evaluations: series selection, disclaimer when demo,
          Source Image for Measurement Group: every slice (frame) of the series
        per NotAnalysable: the NM SR's not-analysable group, Finding Site lung

Choices
-------
* TID 1500 needs at least one measurement group (highdicom enforces it), hence the
  "no lung lesion found" group for an analysed study without lesions: a coded answer a
  machine can read, which dciodvfy and dsrdump accept.
* The 3D largest diameter need not lie in one slice, so it carries no coordinates; what a
  viewer draws (OHIF's Bidirectional tool) is the in-plane long and short axis of the axial
  source slice through the lesion centre (the largest cross-section when that slice holds none
  of the lesion), measured on the mask as the US nodules are
  (:func:`workers.encode.sr_geometry.axes`); the long axis can be shorter than the 3D diameter.
* The yes/no evaluation is the classifier's decision at the card's threshold
  (``CTLesion.refractory``); the threshold itself is a TEXT evaluation next to it.
* Flags, DEMO marking, times and series placement as in :mod:`workers.encode.sr`
  (Series Number 9901, the NM SR's series number: one SR series per model family).
* UIDs derive from the study, every slice of the series used and both models
  (:func:`workers.encode.common.combined_model`), so a re-run replaces the document.
* Image Library: only the images the groups reference. Listing every slice cost ~21 s
  (+ ~5 s to write 1.2 MB) for a 300-slice series on the 2-core CPU, nearly all in
  highdicom's library entries; the evidence sequence still names every slice of the
  series used.  An Enhanced CT is one entry; highdicom reads its pixel
  spacing, orientation and position at the top level only, so the entry is built from a
  header-only stand-in with the shared values and frame 1's position.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Sequence
from typing import Final

import highdicom as hd
import numpy as np
import pydicom

from workers.encode import codes as thy_codes
from workers.encode.common import (
    DEFAULT_MANUFACTURER,
    combined_model,
    pin_datetimes,
    processing_equipment,
    select_source,
    series_description,
    series_sources,
)
from workers.encode.seg import check_lesions, laterality, tracking
from workers.encode.sr import (
    SR_INSTANCE_NUMBER,
    SR_SERIES_NUMBER,
    TextQualitativeEvaluation,
    algorithm_identification,
    device_observation_context,
    disclaimer_evaluations,
    is_image,
    not_analysable_group,
)
from workers.encode.sr_geometry import (
    BIDIRECTIONAL,
    Axes,
    attach_scoord,
    axes,
    cornerstone_tracking_identifier,
    source_for_region,
)
from workers.encode.uids import ObjectKind, output_uids, tracking_uid
from workers.pipelines.results import CTLesion, CTResults, CTSeriesUsed

logger = logging.getLogger(__name__)

SR_CT_SERIES_BASE: Final[str] = "AI thyroid CT lesions SR"


def _unique(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Datasets without repeats (an Enhanced CT names its instance once per slice)."""
    seen: dict[str, pydicom.Dataset] = {}
    for ds in datasets:
        seen.setdefault(ds.SOPInstanceUID, ds)
    return list(seen.values())


_LIBRARY_KEYWORDS: Final[tuple[str, ...]] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "FrameOfReferenceUID",
    "Rows",
    "Columns",
)


def _library_image(ds: pydicom.Dataset) -> pydicom.Dataset:
    """What highdicom's Image Library entry reads, for single-frame and Enhanced CT alike.

    highdicom 0.28 reads Pixel Spacing, Slice Thickness and Image Orientation / Position
    (Patient) at the top level only; an Enhanced CT keeps them in its functional groups.
    For one, return a header-only stand-in carrying the shared pixel measures and
    orientation and the position of frame 1 (TID 1604 describes one position per entry).
    """
    if "PixelSpacing" in ds or "SharedFunctionalGroupsSequence" not in ds:
        return ds
    stand_in = pydicom.Dataset()
    for keyword in _LIBRARY_KEYWORDS:
        if keyword in ds:
            setattr(stand_in, keyword, ds[keyword].value)
    shared = ds.SharedFunctionalGroupsSequence[0]
    first = ds.PerFrameFunctionalGroupsSequence[0]

    def group(name: str) -> pydicom.Dataset:
        return (first if name in first else shared)[name][0]  # type: ignore[no-any-return]

    stand_in.PixelSpacing = group("PixelMeasuresSequence").PixelSpacing
    stand_in.SliceThickness = group("PixelMeasuresSequence").SliceThickness
    stand_in.ImageOrientationPatient = group("PlaneOrientationSequence").ImageOrientationPatient
    stand_in.ImagePositionPatient = group("PlanePositionSequence").ImagePositionPatient
    return stand_in


def _segment_sources(
    lesion: CTLesion, series: CTSeriesUsed, datasets: list[pydicom.Dataset]
) -> list[hd.sr.SourceImageForSegmentation]:
    """The source slices (or frames of one Enhanced CT) holding the lesion's voxels."""
    k0 = lesion.box_origin[0]
    ks = [k0 + dk for dk in range(lesion.mask.shape[0]) if lesion.mask[dk].any()]
    frames: dict[str, list[int]] = {}
    for k in ks:
        frame = series.slices[k].frame_number
        frames.setdefault(datasets[k].SOPInstanceUID, [])
        if frame is not None and "NumberOfFrames" in datasets[k]:
            frames[datasets[k].SOPInstanceUID].append(frame)
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    return [
        hd.sr.SourceImageForSegmentation(
            referenced_sop_class_uid=by_uid[uid].SOPClassUID,
            referenced_sop_instance_uid=uid,
            referenced_frame_numbers=sorted(numbers) or None,
        )
        for uid, numbers in frames.items()
    ]


def _library(
    results: CTResults,
    series: CTSeriesUsed | None,
    datasets: list[pydicom.Dataset],
    images: list[pydicom.Dataset],
) -> list[pydicom.Dataset]:
    """The Image Library: the images the groups reference, not every slice of the series.

    Building a library entry costs highdicom ~70 ms per image (21 s for a 300-slice series);
    every slice of the series stays in the evidence (Current Requested Procedure Evidence).
    With no lesion, the series' middle slice stands for it; a not-analysable source is listed
    as itself.
    """
    if series is None:
        return images
    keep: set[str] = set()
    for lesion in results.lesions:
        keep |= {src.referenced_sop_instance_uid for src in _segment_sources(lesion, series, datasets)}
    if not results.lesions:
        keep.add(str(datasets[len(datasets) // 2].SOPInstanceUID))
    keep |= {n.source.sop_instance_uid for n in results.not_analysable}
    return [ds for ds in images if str(ds.SOPInstanceUID) in keep]


def _check_seg(results: CTResults, series: CTSeriesUsed, seg: pydicom.Dataset | None) -> None:
    if not results.lesions:
        if seg is not None:
            raise ValueError("a SEG was given but the results hold no lesion")
        return
    if seg is None:
        raise ValueError("the results hold lesions: the SR needs their SEG")
    if seg.StudyInstanceUID != results.study_instance_uid:
        raise ValueError("the SEG lies in another study")
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    for lesion in results.lesions:
        item = segments.get(lesion.index)
        if item is None or item.get("TrackingUID") != tracking(results, series, lesion)[1]:
            raise ValueError(f"the SEG's segment {lesion.index} is not lesion {lesion.index}")


def _axes_slice(lesion: CTLesion) -> int:
    """Volume slice of the in-plane axes: the one through the centre, else the widest cut.

    The centre slice may miss a crescent-shaped lesion; then the slice where the lesion's
    cross-section is largest (the first of equals) is measured instead.
    """
    k0 = lesion.box_origin[0]
    k = lesion.centre_slice
    if 0 <= k - k0 < lesion.mask.shape[0] and lesion.mask[k - k0].any():
        return k
    areas = lesion.mask.reshape(lesion.mask.shape[0], -1).sum(axis=1)
    return k0 + int(np.argmax(areas))


def _in_plane_axes(
    lesion: CTLesion, series: CTSeriesUsed, datasets: list[pydicom.Dataset]
) -> tuple[int, Axes]:
    """Long and short axes (mm) of the lesion in one axial source slice, with their end points."""
    k = _axes_slice(lesion)
    k0, r0, c0 = lesion.box_origin
    spacing = _library_image(datasets[k]).PixelSpacing
    drawn = axes(lesion.mask[k - k0], (float(spacing[0]), float(spacing[1])), origin=(r0, c0))
    return k, drawn


def _lesion_group(
    lesion: CTLesion,
    results: CTResults,
    series: CTSeriesUsed,
    datasets: list[pydicom.Dataset],
    seg: pydicom.Dataset,
    manufacturer: str,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    probability = float(lesion.probability)
    if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
        raise ValueError(f"lesion {lesion.index}: probability {probability} not in [0, 1]")
    for name, value in (("diameter", lesion.diameter_mm), ("volume", lesion.volume_mm3)):
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"lesion {lesion.index}: {name} {value} is not a positive number")
    segmenter = algorithm_identification(results.segmentation_model, manufacturer)
    classifier = algorithm_identification(results.classifier_model, manufacturer)
    tracking_id, tracking_uid_ = tracking(results, series, lesion)
    k, drawn = _in_plane_axes(lesion, series, datasets)
    measurements = [
        # first: OHIF's Bidirectional tool reads the group's first NUM and the short axis
        hd.sr.Measurement(
            name=thy_codes.LONG_AXIS,
            value=round(drawn.long, 2),
            unit=thy_codes.MILLIMETER,
            algorithm_id=segmenter,
        ),
        hd.sr.Measurement(
            name=thy_codes.SHORT_AXIS,
            value=round(drawn.short, 2),
            unit=thy_codes.MILLIMETER,
            algorithm_id=segmenter,
        ),
        hd.sr.Measurement(
            name=thy_codes.DIAMETER,
            value=float(lesion.diameter_mm),
            unit=thy_codes.MILLIMETER,
            derivation=thy_codes.MAXIMUM,
            algorithm_id=segmenter,
        ),
        hd.sr.Measurement(
            name=thy_codes.VOLUME,
            value=float(lesion.volume_mm3),
            unit=thy_codes.CUBIC_MILLIMETER,
            algorithm_id=segmenter,
        ),
        hd.sr.Measurement(
            name=thy_codes.PROBABILITY_RAI_REFRACTORY,
            value=probability,
            unit=thy_codes.NO_UNITS,
            algorithm_id=classifier,
        ),
    ]
    x, y, z = lesion.centre_mm
    model = results.classifier_model
    demo = combined_model(results.segmentation_model, model).demo
    evaluations: list[hd.sr.QualitativeEvaluation] = [
        TextQualitativeEvaluation(thy_codes.COMMENT, f"DEMO {tracking_id}" if demo else tracking_id),
        hd.sr.QualitativeEvaluation(
            name=thy_codes.RAI_REFRACTORY,
            value=thy_codes.YES if lesion.refractory else thy_codes.NO,
        ),
        TextQualitativeEvaluation(
            thy_codes.DECISION_THRESHOLD,
            f"{lesion.threshold:g}: RAI-refractory when the probability is at or above it "
            f"({model.name} {model.version})",
        ),
        TextQualitativeEvaluation(thy_codes.LESION_CENTRE, f"x {x:.1f}, y {y:.1f}, z {z:.1f}"),
        TextQualitativeEvaluation(
            thy_codes.AXES_PLANE,
            f"long and short axis in axial slice {k + 1} of {len(series.slices)} "
            f"({'through the centre' if k == lesion.centre_slice else 'largest cross-section'}); "
            "diameter (maximum) and volume in 3D",
        ),
        TextQualitativeEvaluation(thy_codes.SERIES_CHOICE, series.choice or "unspecified"),
        *disclaimer_evaluations(combined_model(results.segmentation_model, model)),
    ]
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid_, identifier=cornerstone_tracking_identifier(BIDIRECTIONAL, tracking_id)
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=lesion.index,
            source_images=_segment_sources(lesion, series, datasets),
        ),
        finding_category=thy_codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_type=thy_codes.METASTATIC_NEOPLASM,
        finding_sites=[
            hd.sr.FindingSite(anatomic_location=thy_codes.LUNG, laterality=laterality(lesion.side))
        ],
        algorithm_id=segmenter,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    source = source_for_region(datasets[k], series.slices[k].frame_number)
    for concept, line in ((thy_codes.LONG_AXIS, drawn.long_line), (thy_codes.SHORT_AXIS, drawn.short_line)):
        attach_scoord(group, concept, hd.sr.GraphicTypeValues.POLYLINE, line, source)
    return group


def _series_sources(
    series: CTSeriesUsed, datasets: list[pydicom.Dataset]
) -> list[hd.sr.SourceImageForMeasurementGroup]:
    """Every slice (frame) of the series analysed: what a "no lesion" verdict is about."""
    frames: dict[str, list[int]] = {}
    for image, ds in zip(series.slices, datasets, strict=True):
        numbers = frames.setdefault(str(ds.SOPInstanceUID), [])
        if image.frame_number is not None and "NumberOfFrames" in ds:
            numbers.append(image.frame_number)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    return [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=by_uid[uid].SOPClassUID,
            referenced_sop_instance_uid=uid,
            referenced_frame_numbers=sorted(numbers) or None,
        )
        for uid, numbers in frames.items()
    ]


def _no_lesion_group(
    results: CTResults,
    series: CTSeriesUsed,
    datasets: list[pydicom.Dataset],
    sop_uid: str,
    manufacturer: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    model = combined_model(results.segmentation_model, results.classifier_model)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(sop_uid, "no-lesion/" + series.series_instance_uid),
            identifier="No lung lesion",
        ),
        finding_sites=[hd.sr.FindingSite(anatomic_location=thy_codes.LUNG)],
        algorithm_id=algorithm_identification(results.segmentation_model, manufacturer),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(
                name=thy_codes.ANALYSIS_RESULT, value=thy_codes.NO_LESION_FOUND
            ),
            TextQualitativeEvaluation(thy_codes.SERIES_CHOICE, series.choice or "unspecified"),
            *disclaimer_evaluations(model),
        ],
        source_images=_series_sources(series, datasets),
    )


def encode_ct_sr(
    results: CTResults,
    sources: Sequence[pydicom.Dataset],
    seg: pydicom.Dataset | None,
    *,
    content_datetime: datetime.datetime,
    manufacturer: str = DEFAULT_MANUFACTURER,
    software_version: str,
) -> hd.sr.Comprehensive3DSR:
    """Encode the CT pipeline's results as a TID 1500 Measurement Report.

    Parameters
    ----------
    results : CTResults
        Lesions of the series used, or the reasons the study was not analysable.
    sources : Sequence[pydicom.Dataset]
        The study's datasets (pixel data not needed): every slice of the series used and
        every source a not-analysable verdict names.
    seg : pydicom.Dataset or None
        The SEG :func:`workers.encode.seg.encode_ct_seg` made of the same results; None
        when there is no lesion.
    content_datetime : datetime.datetime
        Content Date/Time (and every other time stamp).
    manufacturer : str, optional
        Manufacturer of the node.
    software_version : str
        Version of the node's software.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The document, in the source study, series :data:`SR_SERIES_NUMBER`.

    Raises
    ------
    ValueError
        If there is nothing to report, the SEG is missing or does not match the lesions,
        a source is missing, a probability lies outside [0, 1] or a size is not positive.
    """
    if results.series is None and not results.not_analysable:
        raise ValueError("no results to encode")
    series = check_lesions(results) if results.lesions else results.series
    datasets = series_sources(series, sources) if series is not None else []
    if series is not None:
        _check_seg(results, series, seg)
    rejected = [select_source(sources, n.source) for n in results.not_analysable]
    images = _unique([*datasets, *(ds for ds in rejected if is_image(ds))])
    if not images:  # TID 1500 requires an Image Library with at least one image
        raise ValueError("no image among the sources: nothing a TID 1500 report can reference")
    model = combined_model(results.segmentation_model, results.classifier_model)
    named = [s.sop_instance_uid for s in series.slices] if series is not None else []
    named += [n.source.sop_instance_uid for n in results.not_analysable]
    uids = output_uids(ObjectKind.SR, results.study_instance_uid, named, model.name, model.version)

    groups: list[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = []
    if series is not None and seg is not None:
        groups += [
            _lesion_group(lesion, results, series, datasets, seg, manufacturer)
            for lesion in results.lesions
        ]
    elif series is not None:
        groups.append(
            _no_lesion_group(results, series, datasets, uids.sop_instance_uid, manufacturer)
        )
    groups += [
        not_analysable_group(
            n, i, ds, uids.sop_instance_uid, manufacturer, finding_site=thy_codes.LUNG
        )
        for i, (n, ds) in enumerate(zip(results.not_analysable, rejected, strict=True), start=1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=device_observation_context(model, manufacturer),
        procedure_reported=thy_codes.PROCEDURE_CT_CHEST,
        imaging_measurements=groups,
        referenced_images=[_library_image(ds) for ds in _library(results, series, datasets, images)],
    )
    # images first: highdicom copies patient, study and equipment from evidence[0]
    evidence = images + _unique([ds for ds in rejected if not is_image(ds)])
    if seg is not None:
        evidence.append(seg)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=SR_INSTANCE_NUMBER,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        contributing_equipment=[
            processing_equipment(
                m,
                manufacturer=manufacturer,
                software_version=software_version,
                content_datetime=content_datetime,
            )
            for m in (results.segmentation_model, results.classifier_model)
        ],
        series_description=series_description(SR_CT_SERIES_BASE, model),
        manufacturer_model_name=model.name[:64],
        software_versions=software_version,
        content_date=content_datetime.date(),
        content_time=content_datetime.time(),
        coding_schemes=[thy_codes.private_coding_scheme(manufacturer)],
    )
    pin_datetimes(sr, content_datetime)
    logger.info(
        "encoded CT SR: %d lesion group(s), %d not-analysable group(s), models %s",
        len(results.lesions),
        len(results.not_analysable),
        model.name,
    )
    return sr
