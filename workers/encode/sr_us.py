"""Thyroid nodules on ultrasound as a TID 1500 Measurement Report (Comprehensive 3D SR).

Document layout (all built with highdicom's template classes)::

    Imaging Measurement Report (TID 1500)
      Language, Observation Context: device observer = the models that ran, as one device
        ("<seg>+<malignancy>+<lvlnm> <version>", UID from names, versions, checksums)
      Procedure Reported (25010-0, LN, "US Thyroid Report")
      Image Library: every image analysed or refused
      Imaging Measurements
        per USNodule, one Planar ROI group (TID 1410):
          Tracking Identifier "Cornerstone3DTools@^0.1.0:Bidirectional:Nodule <n>"
            + the Tracking UID its SEG segment has
          the outline: Referenced Segment (SEG instance, frame and segment number, with the
            source image and frame) when a SEG is given, else a closed POLYLINE SCOORD on
            the source image (frame), in the pixel coordinates of PS3.3 C.18.6.1.1
          Finding Category (49755003, SCT), Finding (27925004, SCT, "Nodule"),
          Finding Site (69748006, SCT, "Thyroid structure")
          Algorithm Identification (TID 4019): the segmentation model (model outlines only)
          Long Axis (103339001, SCT), Short Axis (103340004, SCT)  } mm, or {pixels} when
            each with its end points (SCOORD, INFERRED FROM)       } the image is
          Area (42798000, SCT)                                      } uncalibrated
          Probability of malignancy (99THYAI), unit 1              } malignancy model (seed 004)
          Probability of large-volume lymph node metastasis, 1     } LVLNM model (seed 002)
          CODE evaluations "Malignant" / "Large-volume lymph node metastasis" = Yes / No (SCT)
          TEXT evaluations: Comment "Nodule <n>", each decision threshold (with its model),
            backbones averaged, outline source, size unit (uncalibrated images), nodule
            centre, region choice, disclaimer when demo
        per analysed image without a nodule, one Planar ROI group (TID 1410):
          Tracking Identifier "Cornerstone3DTools@^0.1.0:RectangleROI:No thyroid nodule <i>",
          Image Region = the B-mode region searched, Finding Site thyroid, the segmentation
          model, CODE evaluation "AI analysis result" = "No thyroid nodule found" (99THYAI),
          TEXT Comment, region choice, disclaimer when demo
        per NotAnalysable: the NM SR's not-analysable group (reason, the image's region)

Choices
-------
* What a viewer draws (OHIF's Bidirectional tool, :mod:`workers.encode.sr_geometry`): the
  long and short axes, as one measurement with one label, their end points computed on the
  mask by the construction that measured the sizes (a mismatch of more than a pixel is refused).
* Sizes of an uncalibrated image (``USNodule.calibrated`` False) are in pixels: unit
  ``({pixels}, UCUM, "pixels")`` / ``({pixels}.{pixels}, UCUM, "square pixels")`` and a TEXT
  row "sizes in pixels: no calibrated ultrasound region", so that nobody reads them as mm.
* Each measurement carries the Algorithm Identification of the model that produced it: sizes
  the segmentation model (none for an outline the site drew), probabilities their scorer.
* The yes/no evaluations are the models' decisions at their cards' thresholds (probability at
  or above the threshold); a score that was not computed (model not run) is left out, not
  written as 0.
* The SEGs (:func:`workers.encode.seg_us.encode_us_segs`, one per image) are matched to the
  nodules by Tracking UID; they are in the evidence, with every source image.
* Flags, DEMO marking, times and series placement as in :mod:`workers.encode.sr` (Series
  Number 9901); UIDs derive from the study, every image analysed or refused and the models
  (:func:`workers.encode.seg_us.us_model`), so a re-run replaces the document.
"""

from __future__ import annotations

import datetime
import logging
import math
from collections.abc import Sequence
from typing import Final

import contourpy
import highdicom as hd
import numpy as np
import pydicom

from workers.encode import codes as thy_codes
from workers.encode.common import (
    DEFAULT_MANUFACTURER,
    pin_datetimes,
    processing_equipment,
    select_source,
    series_description,
)
from workers.encode.seg_us import (
    OUTLINE_SITE,
    check_nodules,
    image_key,
    image_source,
    referenced_frame,
    tracking,
    us_model,
)
from workers.encode.sr import (
    SR_INSTANCE_NUMBER,
    SR_SERIES_NUMBER,
    TextQualitativeEvaluation,
    algorithm_identification,
    device_observation_context,
    disclaimer_evaluations,
    is_image,
    not_analysable_group,
    verdict_group,
)
from workers.encode.sr_geometry import (
    BIDIRECTIONAL,
    Axes,
    attach_scoord,
    axes,
    cornerstone_tracking_identifier,
)
from workers.encode.uids import ObjectKind, output_uids, tracking_uid
from workers.pipelines.results import ModelInfo, USImageUsed, USNodule, USResults

logger = logging.getLogger(__name__)

SR_US_SERIES_BASE: Final[str] = "AI thyroid US nodules SR"
UNCALIBRATED_TEXT: Final[str] = "sizes in pixels: no calibrated ultrasound region"

#: (SEG dataset, segment number, SEG frame numbers holding the segment) of one nodule
SegmentRef = tuple[pydicom.Dataset, int, list[int]]


def _unique(datasets: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    seen: dict[str, pydicom.Dataset] = {}
    for ds in datasets:
        seen.setdefault(str(ds.SOPInstanceUID), ds)
    return list(seen.values())


def _segments(results: USResults, segs: Sequence[pydicom.Dataset]) -> dict[int, SegmentRef]:
    """Each nodule's segment in the given SEGs, found by Tracking UID."""
    if not segs:
        return {}
    if not results.nodules:
        raise ValueError("SEGs were given but the results hold no nodule")
    found: dict[str, SegmentRef] = {}
    for seg in segs:
        if seg.StudyInstanceUID != results.study_instance_uid:
            raise ValueError("a SEG lies in another study")
        frames: dict[int, list[int]] = {}
        shared = seg.SharedFunctionalGroupsSequence[0]
        for i, group in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
            # highdicom moves it to the shared groups when every frame has the same one
            identification = group if "SegmentIdentificationSequence" in group else shared
            number = int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            frames.setdefault(number, []).append(i)
        for item in seg.SegmentSequence:
            number = int(item.SegmentNumber)
            if "TrackingUID" in item and number in frames:
                found[str(item.TrackingUID)] = (seg, number, frames[number])
    out = {}
    for nodule in results.nodules:
        ref = found.get(tracking(results, nodule)[1])
        if ref is None:
            raise ValueError(f"no segment of the given SEGs is nodule {nodule.index}")
        out[nodule.index] = ref
    return out


def _outline(nodule: USNodule) -> np.ndarray:
    """The mask's outer contour as a closed (column, row) polyline, pixel-corner coordinates.

    Pixel ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]`` (PS3.3 C.18.6.1.1: the top left
    corner of the top left pixel is 0.0\\0.0); the contour runs along the pixel edges'
    midpoints between inside and outside pixel centres.
    """
    padded = np.pad(nodule.mask.astype(np.float64), 1)
    generator = contourpy.contour_generator(z=padded)
    lines = [np.asarray(line, dtype=np.float64) for line in generator.lines(0.5)]
    # the longest line: the outer contour of the (largest) region, holes left out
    points = max(lines, key=lambda line: line.shape[0]) - 1.0 + 0.5  # undo pad; centre -> corner
    points += (nodule.box[1], nodule.box[0])
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return np.round(points, 2)


def _source_for_region(image: USImageUsed, ds: pydicom.Dataset) -> hd.sr.SourceImageForRegion:
    frame = referenced_frame(image, ds)
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        referenced_frame_numbers=[frame] if frame is not None else None,
    )


def _probability(
    name: str, value: float | None, model: ModelInfo | None, index: int
) -> float | None:
    if value is None:
        return None
    if model is None:
        raise ValueError(f"nodule {index}: a {name} probability but no {name} model")
    p = float(value)
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ValueError(f"nodule {index}: {name} probability {p} not in [0, 1]")
    return p


def _sizes(
    nodule: USNodule, segmenter: hd.sr.AlgorithmIdentification | None
) -> tuple[list[hd.sr.Measurement], Axes]:
    """Long axis, short axis and area of a nodule, and where the axes lie on the image.

    The end points come from the nodule's mask by the construction that measured the sizes
    (:func:`workers.encode.sr_geometry.axes`); a drawn axis whose length differs from the
    reported one by more than a pixel would mislead, so that is refused.
    """
    length, area = (
        (thy_codes.MILLIMETER, thy_codes.SQUARE_MILLIMETER)
        if nodule.calibrated
        else (thy_codes.PIXELS, thy_codes.SQUARE_PIXELS)
    )
    out = []
    for name, value, unit in (
        (thy_codes.LONG_AXIS, nodule.long_axis, length),
        (thy_codes.SHORT_AXIS, nodule.short_axis, length),
        (thy_codes.AREA, nodule.area, area),
    ):
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(
                f"nodule {nodule.index}: {name.meaning} {value} is not a positive number"
            )
        out.append(
            hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=segmenter)
        )
    spacing = nodule.image.spacing_mm if nodule.calibrated and nodule.image.spacing_mm else (1.0, 1.0)
    drawn = axes(nodule.mask, spacing, origin=(nodule.box[0], nodule.box[1]))
    for name, value, line in (
        (thy_codes.LONG_AXIS, nodule.long_axis, drawn.long),
        (thy_codes.SHORT_AXIS, nodule.short_axis, drawn.short),
    ):
        if abs(value - line) > max(spacing):
            raise ValueError(
                f"nodule {nodule.index}: {name.meaning} {value} differs from its mask's ({line:.2f})"
            )
    return out, drawn


def _decision(
    concept: hd.sr.CodedConcept,
    probability: float,
    threshold: float,
    what: str,
    model: ModelInfo,
) -> list[hd.sr.QualitativeEvaluation]:
    positive = probability >= threshold
    return [
        hd.sr.QualitativeEvaluation(
            name=concept, value=thy_codes.YES if positive else thy_codes.NO
        ),
        TextQualitativeEvaluation(
            thy_codes.DECISION_THRESHOLD,
            f"{threshold:g}: {what} when the probability is at or above it "
            f"({model.name} {model.version})",
        ),
    ]


def _label(tracking_id: str, results: USResults) -> str:
    """The measurement's label in a viewer: "Nodule <n>", "DEMO" first for demo models."""
    return f"DEMO {tracking_id}" if us_model(results).demo else tracking_id


def _nodule_group(
    nodule: USNodule,
    results: USResults,
    ds: pydicom.Dataset,
    segment: SegmentRef | None,
    manufacturer: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    mal_model, lvl_model = results.malignancy_model, results.lvlnm_model
    malignancy = _probability("malignancy", nodule.malignancy, mal_model, nodule.index)
    lvlnm = _probability("LVLNM", nodule.lvlnm, lvl_model, nodule.index)
    site = nodule.outline_source == OUTLINE_SITE
    seg_model = results.segmentation_model
    segmenter = None if site else algorithm_identification(seg_model, manufacturer)
    measurements, drawn = _sizes(nodule, segmenter)
    tracking_id, tracking_uid_ = tracking(results, nodule)
    evaluations: list[hd.sr.QualitativeEvaluation] = [
        TextQualitativeEvaluation(thy_codes.COMMENT, _label(tracking_id, results))
    ]
    if malignancy is not None and mal_model is not None:
        measurements.append(
            hd.sr.Measurement(
                name=thy_codes.PROBABILITY_MALIGNANCY,
                value=malignancy,
                unit=thy_codes.NO_UNITS,
                algorithm_id=algorithm_identification(mal_model, manufacturer),
            )
        )
        evaluations += _decision(
            thy_codes.MALIGNANT, malignancy, nodule.malignancy_threshold, "malignant", mal_model
        )
        if nodule.malignancy_backbones:
            evaluations.append(
                TextQualitativeEvaluation(
                    thy_codes.BACKBONES, ", ".join(nodule.malignancy_backbones)
                )
            )
    if lvlnm is not None and lvl_model is not None:
        measurements.append(
            hd.sr.Measurement(
                name=thy_codes.PROBABILITY_LVLNM,
                value=lvlnm,
                unit=thy_codes.NO_UNITS,
                algorithm_id=algorithm_identification(lvl_model, manufacturer),
            )
        )
        evaluations += _decision(
            thy_codes.LVLNM, lvlnm, nodule.lvlnm_threshold, "large-volume metastasis", lvl_model
        )
    outline = (
        "site SEG: the outline the site sent, copied"
        if site
        else f"model {seg_model.name} {seg_model.version}"
    )
    evaluations.append(TextQualitativeEvaluation(thy_codes.OUTLINE_SOURCE, outline))
    if not nodule.calibrated:
        evaluations.append(TextQualitativeEvaluation(thy_codes.SIZE_UNIT, UNCALIBRATED_TEXT))
    row, column = nodule.centre_px
    evaluations += [
        TextQualitativeEvaluation(thy_codes.NODULE_CENTRE, f"row {row:.1f}, column {column:.1f}"),
        TextQualitativeEvaluation(thy_codes.REGION_CHOICE, nodule.image.choice or "unspecified"),
        *disclaimer_evaluations(us_model(results)),
    ]
    region = None
    referenced = None
    if segment is None:
        region = hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=_outline(nodule),
            source_image=_source_for_region(nodule.image, ds),
        )
    else:
        seg, number, seg_frames = segment
        frame = referenced_frame(nodule.image, ds)
        referenced = hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            frame_number=seg_frames,
            segment_number=number,
            source_image=hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                referenced_frame_numbers=[frame] if frame is not None else None,
            ),
        )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid_,
            identifier=cornerstone_tracking_identifier(BIDIRECTIONAL, tracking_id),
        ),
        referenced_region=region,
        referenced_segment=referenced,
        finding_category=thy_codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_type=thy_codes.NODULE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=thy_codes.THYROID_STRUCTURE)],
        algorithm_id=segmenter,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )
    # OHIF's Bidirectional tool: the long axis (the group's first NUM) and the short axis,
    # each with its end points on the image (frame)
    for concept, line in ((thy_codes.LONG_AXIS, drawn.long_line), (thy_codes.SHORT_AXIS, drawn.short_line)):
        attach_scoord(
            group, concept, hd.sr.GraphicTypeValues.POLYLINE, line, _source_for_region(nodule.image, ds)
        )
    return group


def _drop_segment_numbers(item: pydicom.Dataset) -> int:
    """Remove Referenced Segment Number where Referenced Frame Number names the SEG frame.

    highdicom writes both into a "Referenced Segmentation Frame" IMAGE item; PS3.3 Table 10-3
    allows only one of them (dciodvfy: "Shall not be present when ReferencedFrameNumber is
    present"), and TID 1410 wants the frame numbers.  In a BINARY SEG a frame holds exactly
    one segment, so the frame says which.  Returns how many items were changed.
    """
    changed = 0
    for child in item.get("ContentSequence", []):
        if child.ValueType == "IMAGE":
            for ref in child.get("ReferencedSOPSequence", []):
                if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                    del ref.ReferencedSegmentNumber
                    changed += 1
        changed += _drop_segment_numbers(child)
    return changed


def _no_nodule_group(
    image: USImageUsed,
    index: int,
    results: USResults,
    ds: pydicom.Dataset,
    sop_uid: str,
    manufacturer: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """"No thyroid nodule found" on one image (frame): TID 1410 over the B-mode region searched."""
    sop, frame_key = image_key(image)
    model = us_model(results)
    return verdict_group(
        tracking_identifier=f"No thyroid nodule {index}",
        tracking_uid_=tracking_uid(sop_uid, f"no-nodule/{sop}#{frame_key}"),
        label="DEMO No thyroid nodule found" if model.demo else "No thyroid nodule found",
        finding_site=thy_codes.THYROID_STRUCTURE,
        algorithm=algorithm_identification(results.segmentation_model, manufacturer),
        evaluations=[
            hd.sr.QualitativeEvaluation(
                name=thy_codes.ANALYSIS_RESULT, value=thy_codes.NO_NODULE_FOUND
            ),
            TextQualitativeEvaluation(thy_codes.REGION_CHOICE, image.choice or "unspecified"),
            *disclaimer_evaluations(model),
        ],
        ds=ds,
        frame=referenced_frame(image, ds),
        region=image.region,
    )


def encode_us_sr(
    results: USResults,
    sources: Sequence[pydicom.Dataset],
    segs: Sequence[pydicom.Dataset] = (),
    *,
    content_datetime: datetime.datetime,
    software_version: str,
    manufacturer: str = DEFAULT_MANUFACTURER,
) -> hd.sr.Comprehensive3DSR:
    """Encode the US pipeline's results as a TID 1500 Measurement Report.

    Parameters
    ----------
    results : USResults
        Nodules of the images analysed, and the images that could not be used.
    sources : Sequence[pydicom.Dataset]
        The study's datasets (pixel data not needed): every image analysed and every source a
        not-analysable verdict names.
    segs : Sequence[pydicom.Dataset], optional
        The SEGs :func:`workers.encode.seg_us.encode_us_segs` made of the same results; each
        nodule group then references its segment.  Empty: the groups carry the outlines as
        polylines instead.
    content_datetime : datetime.datetime
        Content Date/Time (and every other time stamp).
    software_version : str
        Version of the node's software.
    manufacturer : str, optional
        Manufacturer of the node.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The document, in the source study, series :data:`SR_SERIES_NUMBER`.

    Raises
    ------
    ValueError
        If there is nothing to report, a SEG does not hold every nodule, a source is missing,
        a probability lies outside [0, 1] (or has no model), or a size is not positive.
    """
    if not results.images and not results.not_analysable:
        raise ValueError("no results to encode")
    check_nodules(results)
    segments = _segments(results, segs)
    by_key = {image_key(image): image_source(image, sources) for image in results.images}
    rejected = [select_source(sources, n.source) for n in results.not_analysable]
    images = _unique([*by_key.values(), *(ds for ds in rejected if is_image(ds))])
    if not images:  # TID 1500 requires an Image Library with at least one image
        raise ValueError("no image among the sources: nothing a TID 1500 report can reference")
    model = us_model(results)
    named = [image.source.sop_instance_uid for image in results.images]
    named += [n.source.sop_instance_uid for n in results.not_analysable]
    uids = output_uids(ObjectKind.SR, results.study_instance_uid, named, model.name, model.version)
    sop_uid = uids.sop_instance_uid

    groups: list[
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ] = [
        _nodule_group(
            nodule,
            results,
            by_key[image_key(nodule.image)],
            segments.get(nodule.index),
            manufacturer,
        )
        for nodule in results.nodules
    ]
    with_nodules = {image_key(n.image) for n in results.nodules}
    empty = [image for image in results.images if image_key(image) not in with_nodules]
    groups += [
        _no_nodule_group(image, i, results, by_key[image_key(image)], sop_uid, manufacturer)
        for i, image in enumerate(empty, start=1)
    ]
    groups += [
        not_analysable_group(n, i, ds, sop_uid, manufacturer)
        for i, (n, ds) in enumerate(zip(results.not_analysable, rejected, strict=True), start=1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=device_observation_context(model, manufacturer),
        procedure_reported=thy_codes.PROCEDURE_US_THYROID,
        imaging_measurements=groups,
        referenced_images=images,
    )
    # images first: highdicom copies patient, study and equipment from evidence[0]
    evidence = images + _unique([ds for ds in rejected if not is_image(ds)]) + list(segs)
    scorers = [m for m in (results.malignancy_model, results.lvlnm_model) if m is not None]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=uids.series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
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
            for m in (results.segmentation_model, *scorers)
        ],
        series_description=series_description(SR_US_SERIES_BASE, model),
        manufacturer_model_name=model.name[:64],
        software_versions=software_version,
        content_date=content_datetime.date(),
        content_time=content_datetime.time(),
        coding_schemes=[thy_codes.private_coding_scheme(manufacturer)],
    )
    if segments and _drop_segment_numbers(sr) != len(results.nodules):
        raise RuntimeError("highdicom wrote the segment references in an unexpected form")
    pin_datetimes(sr, content_datetime)
    logger.info(
        "encoded US SR: %d nodule group(s) (%s), %d image(s) without nodule, "
        "%d not-analysable group(s), models %s",
        len(results.nodules),
        "segments" if segments else "polylines",
        len(empty),
        len(results.not_analysable),
        model.name,
    )
    return sr
