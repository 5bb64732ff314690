"""NM thyroid results as a TID 1500 Measurement Report (Comprehensive 3D SR).

Document layout (all built with highdicom's template classes)::

    Imaging Measurement Report (TID 1500)
      Language, Observation Context: device observer = the algorithm
        (UID derived from model name, version and weights checksum; name
        "<model name> <version>", model name, manufacturer)
      Procedure Reported (30695-1, LN, "NM Thyroid gland Views")
      Image Library: every source image (at least one is required)
      Imaging Measurements
        per NMDiagnosis, one Measurement Group (TID 1501):
          Tracking Identifier "Cornerstone3DTools@^0.1.0:ArrowAnnotate:Thyroid AI
            diagnosis <n>" + Tracking Unique Identifier (deterministic)
          Finding = the predicted class (ClassProbability.code)
          Finding Site = (69748006, SCT, "Thyroid structure")
          Algorithm Identification (TID 4019): model name, version, weights
          one measurement per class: "Probability of <class>" (99THYAI),
            value 0..1, unit (1, UCUM, "no units"), with the algorithm again;
            the predicted class first, with a SCOORD child (INFERRED FROM): an
            arrow whose tip is the peak of the model's Grad-CAM
          TEXT qualitative evaluations (TID 1501 row 12): Comment (the label a
            viewer shows), frame selection, disclaimer when demo
          Source Image for Measurement Group (+ frame number when given)
        right after it, when seed 001 ran on that image (GravesOutcome), a second
        Measurement Group (TID 1501) with its own tracking identifier:
          Tracking Identifier "Cornerstone3DTools@^0.1.0:ArrowAnnotate:Thyroid AI
            I-131 outcome <n>" + Tracking UID
          Finding Site = (69748006, SCT, "Thyroid structure")
          Algorithm Identification (TID 4019): seed 001's name, version, weights
          "Probability of cure after I-131 therapy" (99THYAI P-I131_CURE),
            value 0..1, unit (1, UCUM, "no units"), with seed 001's algorithm
            and its arrow to seed 001's Grad-CAM peak (tail on the other side)
          CODE evaluation "Cure after first I-131 therapy" (99THYAI) = Yes / No
            (SCT) at the card's decision threshold
          TEXT evaluations: Comment, decision threshold, disclaimer when demo
          Source Image for Measurement Group: the same image (and frame)
        per NotAnalysable on an image, one Planar ROI group (TID 1410):
          Tracking Identifier "Cornerstone3DTools@^0.1.0:RectangleROI:Thyroid AI
            not analysable <n>", Image Region = the whole image (frame)
          Finding Site, Algorithm Identification
          CODE evaluation "AI analysis result" = "Not analysable" (99THYAI)
          TEXT evaluations: Comment, "Reason not analysable" = the reason
        per NotAnalysable on a non-image instance (a KOS or SR in the study), a
          TID 1501 group as above without region, the reason naming the instance

Choices
-------
* DEMO marking: when ``ModelInfo.demo`` the text "DEMO - not for clinical
  use" is (1) the start of the Series Description, which every PACS series
  list and OHIF's study browser show, (2) a TEXT "Disclaimer" evaluation in
  every measurement group, which SR renderers (OHIF's SR viewport, dsrdump,
  PACS text views) show next to the result, and (3) the start of the
  Contribution Description.  Algorithm Name stays the bare model name so that
  machines can match it.
* Flags: Completion COMPLETE (nothing more will be added), Verification
  UNVERIFIED and Preliminary PRELIMINARY: an AI result awaiting a physician,
  never a final report.
* Series: new series in the source study, Series Number
  :data:`SR_SERIES_NUMBER`; Series/SOP Instance UIDs derived from study,
  sources, model name and version (:mod:`workers.encode.uids`), so a re-run
  replaces the earlier document.
* Seed 001 in a group of its own rather than rows added to seed 003's group:
  every row of a TID 1501 group inherits the group's Algorithm Identification
  and Tracking Identifier, and a viewer (OHIF's SR viewport, dsrdump) lists
  one finding per group; a separate group keeps each yes/no evaluation and
  threshold next to the one model it belongs to.
* Two models: when seed 001 ran, the device observer, the UIDs and the Series
  Description use :func:`workers.encode.common.combined_model` of seed 003 and
  seed 001 (as the CT SR does for its two models), and the Contributing
  Equipment names each model in an item of its own.  Without seed-001 results
  the document is exactly seed 003's (same UIDs as before seed 001 existed).
* Viewers: the layout is what OHIF v3 (3.13) loads into its Measurements panel
  (:mod:`workers.encode.sr_geometry`): the tool named in the Tracking Identifier,
  the geometry under the group's first NUM, a Comment row as the label; an SR in
  which one group on an image has no coordinates loads no measurement at all,
  hence the region of a not-analysable image.
* Times: Content Date/Time, Instance Creation Date/Time and the processing
  equipment's Contribution DateTime all come from ``content_datetime``: the
  same input gives a byte-identical file.
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
from highdicom.sr.templates import Template
from pydicom.sr.codedict import codes

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
from workers.encode.sr_geometry import (
    ARROW_ANNOTATE,
    RECTANGLE_ROI,
    arrow,
    attach_scoord,
    cornerstone_tracking_identifier,
    heatmap_peak,
    rectangle,
    source_for_region,
)
from workers.encode.uids import ObjectKind, device_uid, output_uids, tracking_uid
from workers.pipelines.results import (
    GravesOutcome,
    ModelInfo,
    NMDiagnosis,
    NMResults,
    NotAnalysable,
    SourceImage,
)

logger = logging.getLogger(__name__)

#: Series Number of the SR series: high, so that PACS lists it after the
#: acquired series; fixed, so that re-runs land in the same place.
SR_SERIES_NUMBER: Final[int] = 9901
SR_INSTANCE_NUMBER: Final[int] = 1
SR_SERIES_BASE: Final[str] = "AI thyroid NM SR"


class TextQualitativeEvaluation(hd.sr.QualitativeEvaluation):
    """TID 1501 row 12: a qualitative evaluation in text form.

    highdicom 0.28 offers the CODE form (row 11) only; this is the same
    single-item template with a TEXT content item, so that the group's
    constructor accepts it and validates the rest as usual.
    """

    def __init__(self, name: hd.sr.CodedConcept, value: str) -> None:
        """
        Parameters
        ----------
        name : highdicom.sr.CodedConcept
            Concept name of the evaluation.
        value : str
            The text.
        """
        item = hd.sr.TextContentItem(
            name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        Template.__init__(self, [item])


def _model_of(results: NMResults) -> ModelInfo:
    models = {d.model for d in results.diagnoses} | {n.model for n in results.not_analysable}
    if len(models) != 1:
        raise ValueError(f"an SR holds the results of exactly one model, got {len(models)}")
    return models.pop()


def _graves_model_of(results: NMResults) -> ModelInfo | None:
    models = {g.model for g in results.graves}
    if len(models) > 1:
        raise ValueError(f"seed-001 outcomes of {len(models)} models in one study")
    return models.pop() if models else None


def _source_ref(source: SourceImage, ds: pydicom.Dataset) -> hd.sr.SourceImageForMeasurementGroup:
    """Reference to the source; with the frame the result names, if a multi-frame IOD."""
    frames = None
    if source.frame_number is not None:
        if not 1 <= source.frame_number <= number_of_frames(ds):
            raise ValueError(
                f"frame {source.frame_number} outside 1..{number_of_frames(ds)} "
                f"of {source.sop_instance_uid}"
            )
        if "NumberOfFrames" in ds:
            frames = [source.frame_number]
    return hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        referenced_frame_numbers=frames,
    )


def _group_key(source: SourceImage) -> str:
    return f"{source.sop_instance_uid}#{source.frame_number or 0}"


def algorithm_identification(model: ModelInfo, manufacturer: str) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification of a model: name, version, weights checksum."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"weights sha256 {model.weights_sha256}"],
        manufacturer=manufacturer,
    )


def disclaimer_evaluations(model: ModelInfo) -> list[hd.sr.QualitativeEvaluation]:
    """The TEXT "Disclaimer" evaluation of a demo model (empty list otherwise)."""
    if model.disclaimer is None:
        return []
    return [TextQualitativeEvaluation(thy_codes.DISCLAIMER, model.disclaimer)]


def device_observation_context(model: ModelInfo, manufacturer: str) -> hd.sr.ObservationContext:
    """Observation context whose observer is the algorithm as a device.

    The device UID derives from model name, version and weights checksum; its
    name is ``"<model name> <version>"``.
    """
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model.name, model.version, model.weights_sha256),
            name=f"{model.name} {model.version}",
            manufacturer_name=manufacturer,
            model_name=model.name,
        ),
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def _demo_label(label: str, model: ModelInfo) -> str:
    """A measurement's label in a viewer, "DEMO" first for demo models (LO: 64 characters)."""
    return (f"DEMO {label}" if model.demo else label)[:64].rstrip()


def _point_at_peak(
    group: hd.sr.MeasurementsAndQualitativeEvaluations,
    measurement: hd.sr.CodedConcept,
    heatmap: np.ndarray,
    source: SourceImage,
    ds: pydicom.Dataset,
    *,
    down: bool,
) -> None:
    """Attach to a probability an arrow whose tip is the peak of the model's Grad-CAM.

    The scintigram has no lesion to measure; the honest geometry of an image-level
    probability is where the model's evidence was strongest.  The tail (where a viewer puts
    the label) lies up-right for seed 003 and down-right for seed 001 (``down``), so that two
    labels on one image never cover each other.
    """
    rows, columns = int(ds.Rows), int(ds.Columns)
    if np.shape(heatmap) != (rows, columns):
        raise ValueError(
            f"heatmap shape {np.shape(heatmap)} differs from the image's ({rows}, {columns})"
        )
    attach_scoord(
        group,
        measurement,
        hd.sr.GraphicTypeValues.POLYLINE,
        arrow(heatmap_peak(heatmap), rows, columns, down=down),
        source_for_region(ds, source.frame_number or 1),
        name=thy_codes.GRADCAM_PEAK,
    )


def _diagnosis_group(
    diagnosis: NMDiagnosis, index: int, ds: pydicom.Dataset, sop_uid: str, manufacturer: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    algorithm = algorithm_identification(diagnosis.model, manufacturer)
    if not any(p.code == diagnosis.predicted.code for p in diagnosis.probabilities):
        raise ValueError("the predicted class is not among the class probabilities")
    measurements = []
    # the predicted class first: a viewer draws the group's first measurement
    ordered = sorted(diagnosis.probabilities, key=lambda p: p.code != diagnosis.predicted.code)
    for prob in ordered:
        value = float(prob.probability)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"probability of {prob.key!r} is {value}, not in [0, 1]")
        measurements.append(
            hd.sr.Measurement(
                name=thy_codes.probability_concept(prob.key, prob.code),
                value=value,
                unit=thy_codes.NO_UNITS,
                algorithm_id=algorithm,
            )
        )
    label = f"{diagnosis.predicted.code.meaning} {float(diagnosis.predicted.probability):.2f}"
    evaluations: list[hd.sr.QualitativeEvaluation] = [
        TextQualitativeEvaluation(thy_codes.COMMENT, _demo_label(label, diagnosis.model))
    ]
    if diagnosis.frame_choice:
        evaluations.append(TextQualitativeEvaluation(thy_codes.FRAME_CHOICE, diagnosis.frame_choice))
    evaluations.extend(disclaimer_evaluations(diagnosis.model))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(sop_uid, _group_key(diagnosis.source)),
            identifier=cornerstone_tracking_identifier(
                ARROW_ANNOTATE, f"Thyroid AI diagnosis {index}"
            ),
        ),
        finding_type=thy_codes.to_coded_concept(diagnosis.predicted.code),
        finding_sites=[hd.sr.FindingSite(anatomic_location=thy_codes.THYROID_STRUCTURE)],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations or None,
        source_images=[_source_ref(diagnosis.source, ds)],
    )
    _point_at_peak(
        group,
        thy_codes.probability_concept(diagnosis.predicted.key, diagnosis.predicted.code),
        diagnosis.heatmap,
        diagnosis.source,
        ds,
        down=False,
    )
    return group


def _graves_group(
    outcome: GravesOutcome, index: int, ds: pydicom.Dataset, sop_uid: str, manufacturer: str
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The seed-001 group of one image: probability of cure, yes/no, threshold."""
    value = float(outcome.probability_cured)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"probability of cure is {value}, not in [0, 1]")
    if not (math.isfinite(outcome.threshold) and 0.0 <= outcome.threshold <= 1.0):
        raise ValueError(f"decision threshold is {outcome.threshold}, not in [0, 1]")
    algorithm = algorithm_identification(outcome.model, manufacturer)
    label = f"I-131 cure {value:.2f}: {'yes' if outcome.cured else 'no'}"
    evaluations: list[hd.sr.QualitativeEvaluation] = [
        TextQualitativeEvaluation(thy_codes.COMMENT, _demo_label(label, outcome.model)),
        hd.sr.QualitativeEvaluation(
            name=thy_codes.I131_CURE, value=thy_codes.YES if outcome.cured else thy_codes.NO
        ),
        TextQualitativeEvaluation(
            thy_codes.DECISION_THRESHOLD,
            f"{outcome.threshold:.3f} (probability of cure at or above it: cured)",
        ),
        *disclaimer_evaluations(outcome.model),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(sop_uid, "graves/" + _group_key(outcome.source)),
            identifier=cornerstone_tracking_identifier(
                ARROW_ANNOTATE, f"Thyroid AI I-131 outcome {index}"
            ),
        ),
        finding_sites=[hd.sr.FindingSite(anatomic_location=thy_codes.THYROID_STRUCTURE)],
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=thy_codes.PROBABILITY_I131_CURE,
                value=value,
                unit=thy_codes.NO_UNITS,
                algorithm_id=algorithm,
            )
        ],
        qualitative_evaluations=evaluations,
        source_images=[_source_ref(outcome.source, ds)],
    )
    _point_at_peak(
        group, thy_codes.PROBABILITY_I131_CURE, outcome.heatmap, outcome.source, ds, down=True
    )
    return group


def is_image(ds: pydicom.Dataset) -> bool:
    """Whether a source can be referenced as an IMAGE (has the Image Pixel module)."""
    return "Rows" in ds and "Columns" in ds


def verdict_group(
    *,
    tracking_identifier: str,
    tracking_uid_: str,
    label: str,
    finding_site: hd.sr.CodedConcept,
    algorithm: hd.sr.AlgorithmIdentification,
    evaluations: list[hd.sr.QualitativeEvaluation],
    ds: pydicom.Dataset,
    frame: int | None,
    region: tuple[float, float, float, float] | None = None,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A verdict without a measurement (not analysable, nothing found) on one image.

    TID 1410 with the image region the verdict concerns (``region`` ``(row0, col0, row1,
    col1)``, the whole image by default) as a rectangle, named for OHIF's RectangleROI tool
    and labelled by a Comment row.  OHIF 3.13 fails to load any measurement of an SR when one
    group has no spatial coordinates, so a verdict on an image carries the image's outline
    rather than nothing.
    """
    row0, col0, row1, col1 = region or (0, 0, int(ds.Rows), int(ds.Columns))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid_,
            identifier=cornerstone_tracking_identifier(RECTANGLE_ROI, tracking_identifier),
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=rectangle(row0, col0, row1, col1),
            source_image=source_for_region(ds, frame),
        ),
        finding_sites=[hd.sr.FindingSite(anatomic_location=finding_site)],
        algorithm_id=algorithm,
        qualitative_evaluations=[
            TextQualitativeEvaluation(thy_codes.COMMENT, label[:64].rstrip()),
            *evaluations,
        ],
    )


def not_analysable_group(
    result: NotAnalysable,
    index: int,
    ds: pydicom.Dataset,
    sop_uid: str,
    manufacturer: str,
    *,
    finding_site: hd.sr.CodedConcept = thy_codes.THYROID_STRUCTURE,
) -> hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1500 group saying why a source could not be analysed.

    On an image: a TID 1410 group whose region is the whole image (frame), see
    :func:`verdict_group`.  On a non-image instance (a KOS, an earlier SR): a TID 1501 group
    that names the instance in its reason (an IMAGE item cannot point at it).

    Parameters
    ----------
    result : NotAnalysable
        The verdict and its reason.
    index : int
        1-based number of the group among the not-analysable ones.
    ds : pydicom.Dataset
        The source the verdict names (referenced when it is an image, named in
        the reason otherwise).
    sop_uid : str
        SOP Instance UID of the SR (its tracking UIDs derive from it).
    manufacturer : str
        Manufacturer of the node (in the Algorithm Identification).
    finding_site : highdicom.sr.CodedConcept, optional
        Finding Site of the group; the thyroid by default.

    Returns
    -------
    highdicom.sr.PlanarROIMeasurementsAndQualitativeEvaluations or highdicom.sr.MeasurementsAndQualitativeEvaluations
        The group.
    """
    reason = result.reason or "unspecified"
    if not is_image(ds):  # no IMAGE reference possible: name the instance in the text
        reason = f"{reason} (instance {ds.SOPInstanceUID}, SOP class {ds.SOPClassUID})"
    evaluations: list[hd.sr.QualitativeEvaluation] = [
        hd.sr.QualitativeEvaluation(name=thy_codes.ANALYSIS_RESULT, value=thy_codes.NOT_ANALYSABLE),
        TextQualitativeEvaluation(thy_codes.REASON_NOT_ANALYSABLE, reason),
        *disclaimer_evaluations(result.model),
    ]
    identifier = f"Thyroid AI not analysable {index}"
    uid = tracking_uid(sop_uid, "not-analysable/" + _group_key(result.source))
    algorithm = algorithm_identification(result.model, manufacturer)
    if is_image(ds):
        return verdict_group(
            tracking_identifier=identifier,
            tracking_uid_=uid,
            label=_demo_label(f"Not analysable: {reason}", result.model),
            finding_site=finding_site,
            algorithm=algorithm,
            evaluations=evaluations,
            ds=ds,
            frame=result.source.frame_number or 1,
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier),
        finding_sites=[hd.sr.FindingSite(anatomic_location=finding_site)],
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations,
    )


def encode_nm_sr(
    results: NMResults,
    sources: Sequence[pydicom.Dataset],
    *,
    content_datetime: datetime.datetime,
    manufacturer: str = DEFAULT_MANUFACTURER,
    software_version: str,
) -> hd.sr.Comprehensive3DSR:
    """Encode the NM pipeline's results as a TID 1500 Measurement Report.

    Parameters
    ----------
    results : NMResults
        Diagnoses and not-analysable verdicts of one study, from one model (seed 003),
        and seed 001's outcomes on some of the diagnosed images (from one model).
    sources : Sequence[pydicom.Dataset]
        The source datasets (pixel data not needed); every instance a result
        names must be among them.  Patient and study modules are copied from
        them.
    content_datetime : datetime.datetime
        Content Date/Time of the document (and every other time stamp in it).
    manufacturer : str, optional
        Manufacturer of the node.
    software_version : str
        Version of the node's software.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The document, in the source study, in a new series.

    Raises
    ------
    ValueError
        If there is nothing to report, results of several models are mixed,
        a source is missing or lies in another study, no source is an image,
        a frame number is out of range, a probability lies outside [0, 1], or a
        seed-001 outcome names an image (frame) no diagnosis names.
    """
    if not results.diagnoses and not results.not_analysable:
        raise ValueError("no results to encode")
    dx_model = _model_of(results)
    graves_model = _graves_model_of(results)
    models = [dx_model] if graves_model is None else [dx_model, graves_model]
    model = dx_model if graves_model is None else combined_model(dx_model, graves_model)
    graves_by_key = {_group_key(g.source): g for g in results.graves}
    if len(graves_by_key) != len(results.graves):
        raise ValueError("two seed-001 outcomes for one image")
    unmatched = set(graves_by_key) - {_group_key(d.source) for d in results.diagnoses}
    if unmatched:
        raise ValueError(f"seed-001 outcome(s) for image(s) without a diagnosis: {sorted(unmatched)}")
    named: list[SourceImage] = [d.source for d in results.diagnoses]
    named += [n.source for n in results.not_analysable]
    for src in named:
        if src.study_instance_uid != results.study_instance_uid:
            raise ValueError(f"source {src.sop_instance_uid} lies outside the results' study")
    by_uid = {s.sop_instance_uid: select_source(sources, s) for s in named}
    ordered = [by_uid[uid] for uid in sorted(by_uid)]
    images = [ds for ds in ordered if is_image(ds)]
    if not images:  # TID 1500 requires an Image Library with at least one image
        raise ValueError("no image among the sources: nothing a TID 1500 report can reference")
    # images first: highdicom copies patient, study and acquisition equipment from evidence[0]
    evidence = images + [ds for ds in ordered if not is_image(ds)]
    uids = output_uids(
        ObjectKind.SR, results.study_instance_uid, by_uid, model.name, model.version
    )
    sop_uid = uids.sop_instance_uid

    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    ] = []
    n_graves = 0
    for i, d in enumerate(results.diagnoses, start=1):
        ds = by_uid[d.source.sop_instance_uid]
        groups.append(_diagnosis_group(d, i, ds, sop_uid, manufacturer))
        outcome = graves_by_key.get(_group_key(d.source))
        if outcome is not None:
            n_graves += 1
            groups.append(_graves_group(outcome, n_graves, ds, sop_uid, manufacturer))
    groups += [
        not_analysable_group(n, i, by_uid[n.source.sop_instance_uid], sop_uid, manufacturer)
        for i, n in enumerate(results.not_analysable, start=1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=device_observation_context(model, manufacturer),
        procedure_reported=thy_codes.PROCEDURE_THYROID_SCINTIGRAPHY,
        imaging_measurements=groups,
        referenced_images=images,
    )
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
            for m in models
        ],
        series_description=series_description(SR_SERIES_BASE, model),
        manufacturer_model_name=model.name[:64],
        software_versions=software_version,
        content_date=content_datetime.date(),
        content_time=content_datetime.time(),
        coding_schemes=[thy_codes.private_coding_scheme(manufacturer)],
    )
    pin_datetimes(sr, content_datetime)
    logger.info(
        "encoded NM SR: %d diagnosis group(s), %d I-131 outcome group(s), "
        "%d not-analysable group(s), model %s %s",
        len(results.diagnoses),
        n_graves,
        len(results.not_analysable),
        model.name,
        model.version,
    )
    return sr
