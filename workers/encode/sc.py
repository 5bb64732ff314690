"""Grad-CAM heatmaps as Secondary Capture images: one per NM diagnosis, one per seed-001
outcome (cure after I-131 therapy), one per CT lesion.

The picture (see :mod:`workers.encode.heatmap_render`) is the source frame
windowed to 8 bit, upscaled to 512 pixels on its long side, with the Grad-CAM
map blended in colour and a legend burned in: model title and version,
predicted class and probability, every class probability, a colour bar and,
for demo models, "DEMO - not for clinical use" in red above the image and
below the legend.

For a CT lesion (:func:`encode_lesion_sc`) the picture is the axial source
slice through the lesion's centre in a lung window (W 1500 / L -600: the
lesions sit in aerated lung, where a soft-tissue window shows nothing), the
lesion's 3D Grad-CAM on that slice blended in, its mask on that slice outlined
in magenta, and a legend with the lesion's number, side, largest diameter,
volume, probability of RAI-refractory status, the yes/no decision at the
card's threshold and both models' names and versions.

For a seed-001 outcome (:func:`encode_graves_sc`) the picture is the same
source frame with seed 001's Grad-CAM (the ResNet50's "cured" logit) and a
legend with the probability of cure, the decision threshold, the yes/no
decision and the model's name and version.

DICOM choices
-------------
* SOP class Secondary Capture Image, RGB, 8 bit, Explicit VR Little Endian
  passed explicitly (highdicom's two constructors default differently).
* Conversion Type ``WSD`` (workstation): the image is rendered by software,
  not digitised from film or video.
* Same study as the source (patient and study modules copied from it), new
  series; Series/SOP Instance UIDs derived from study, source, model name and
  version, the SOP Instance UID also from the frame number
  (:mod:`workers.encode.uids`): a re-run replaces, it never duplicates.  CT:
  derived from every slice of the series used and both models, the SOP
  Instance UID also from the lesion index, so all lesions of a study share one
  series.
* Seed 001's SC: UIDs derived as for seed 003's but from seed 001's name and
  version (and an ``i131-cure`` instance key), so they never meet seed 003's;
  Series Number :data:`SC_GRAVES_SERIES_NUMBER` (9904; 9903 is the SEG
  series): its own place in the PACS series list, after seed 003's heatmaps.
* Series Number :data:`SC_SERIES_NUMBER` unless given; Instance Number the
  source frame number (1 for single-frame sources) unless given; CT: the
  lesion index.
* Source Image Sequence: the source's SOP class and instance, purpose
  (121322, DCM, "Source image for image processing operation"), and the
  Referenced Frame Number when the source is multi-frame.
* Body Part Examined and Patient Orientation copied from the source (without
  Body Part Examined, dciodvfy asks for Laterality).  A source with no
  usable Patient Orientation gives an SC whose Patient Orientation is empty
  (Type 2).  CT: Patient Orientation is the closest one to the source's Image
  Orientation (Patient), e.g. ``L\\P`` for an axial slice.
* Burned In Annotation ``NO``: the legend names the model and its output,
  never the patient.
* Content, Instance Creation, Secondary Capture and Contribution times all
  come from ``content_datetime``: the same input gives a byte-identical file.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from typing import Final

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from workers.encode.codes import SOURCE_IMAGE_FOR_PROCESSING
from workers.encode.common import (
    DEFAULT_MANUFACTURER,
    combined_model,
    number_of_frames,
    pin_datetimes,
    processing_equipment,
    select_source,
    series_description,
    series_sources,
)
from workers.encode.heatmap_render import LegendRow, LegendText, blend, compose, window_to_uint8
from workers.encode.seg import check_lesions
from workers.encode.uids import ObjectKind, OutputUIDs, output_uids
from workers.pipelines.results import CTLesion, CTResults, GravesOutcome, ModelInfo, NMDiagnosis

logger = logging.getLogger(__name__)

#: Series Number of the heatmap series: after the SR's 9901, fixed.
SC_SERIES_NUMBER: Final[int] = 9902
SC_SERIES_BASE: Final[str] = "AI thyroid Grad-CAM"
#: Series Number of seed 001's heatmaps (cure after I-131 therapy): after seed 003's 9902 and
#: the SEG series' 9903.
SC_GRAVES_SERIES_NUMBER: Final[int] = 9904
SC_GRAVES_SERIES_BASE: Final[str] = "AI Graves I-131 outcome Grad-CAM"
SC_CT_SERIES_BASE: Final[str] = "AI thyroid CT lesion Grad-CAM"
#: Lung window (center, width) in HU for the CT lesion pictures.
LUNG_WINDOW: Final[tuple[float, float]] = (-600.0, 1500.0)
_BIPED: Final[frozenset[str]] = frozenset("APRLHF")


def _frame(source: pydicom.Dataset, frame_number: int | None) -> tuple[np.ndarray, int | None]:
    """The source frame (after the modality LUT) and the frame number to reference."""
    frames = number_of_frames(source)
    if source.get("SamplesPerPixel", 1) != 1:
        raise ValueError("the heatmap encoder expects a monochrome source")
    if frame_number is None and frames > 1:
        raise ValueError(f"source has {frames} frames but the result names none")
    if frame_number is not None and not 1 <= frame_number <= frames:
        raise ValueError(f"frame {frame_number} outside 1..{frames}")
    pixels = source.pixel_array
    if pixels.ndim == 3:
        pixels = pixels[(frame_number or 1) - 1]
    pixels = apply_modality_lut(pixels, source)
    if source.PhotometricInterpretation == "MONOCHROME1":
        pixels = pixels.max() - pixels
    # reference the frame the result names, if the source is a multi-frame IOD
    # (NM Image Storage is one even with a single frame)
    ref_frame = frame_number if "NumberOfFrames" in source else None
    return pixels, ref_frame


def _first(value: object) -> float | None:
    """First value of a possibly multi-valued DS, or None when empty."""
    if isinstance(value, MultiValue):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    return float(value)  # type: ignore[arg-type]


def _window(source: pydicom.Dataset) -> tuple[float, float] | None:
    center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return center, width


def _patient_orientation(source: pydicom.Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is None or len(value) != 2:
        return None
    row, col = str(value[0]), str(value[1])
    if not row or not col or not set(row + col) <= _BIPED:
        return None
    return row, col


def _legend(diagnosis: NMDiagnosis, frame_number: int | None, frames: int) -> LegendText:
    model = diagnosis.model
    rows = tuple(
        LegendRow(
            label=p.code.meaning,
            probability=float(np.clip(p.probability, 0.0, 1.0)),
            predicted=p.code == diagnosis.predicted.code,
        )
        for p in diagnosis.probabilities
    )
    where = f"frame {frame_number} of {frames}" if frames > 1 else "single frame"
    return LegendText(
        title=model.title,
        model_line=f"Model {model.name}, version {model.version}",
        rows=rows,
        source_line=f"Source: {where}. AI output, not verified by a physician.",
        disclaimer=model.disclaimer,
    )


def _source_image_item(source: pydicom.Dataset, ref_frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if ref_frame is not None:
        item.ReferencedFrameNumber = ref_frame
    item.PurposeOfReferenceCodeSequence = [SOURCE_IMAGE_FOR_PROCESSING]
    return item


def secondary_capture(
    source: pydicom.Dataset,
    pixels: np.ndarray,
    *,
    uids: OutputUIDs,
    models: list[ModelInfo],
    description_model: ModelInfo,
    series_base: str,
    series_number: int,
    instance_number: int,
    orientation: tuple[str, str] | None,
    ref_frame: int | None,
    derivation: str,
    content_datetime: datetime.datetime,
    manufacturer: str,
    software_version: str,
) -> hd.sc.SCImage:
    """The RGB Secondary Capture both encoders write (see the module's DICOM choices)."""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=orientation or ("A", "F"),  # placeholder, emptied below
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[
            processing_equipment(
                m,
                manufacturer=manufacturer,
                software_version=software_version,
                content_datetime=content_datetime,
            )
            for m in models
        ],
        series_description=series_description(series_base, description_model),
        manufacturer_model_name=description_model.name[:64],
        software_versions=software_version,
        content_date=content_datetime.date(),
        content_time=content_datetime.time(),
    )
    sc.copy_patient_and_study_information(source)
    if orientation is None:
        logger.warning("source has no usable Patient Orientation; the SC's is left empty")
        sc.PatientOrientation = []  # Type 2: present, empty
    if "BodyPartExamined" in source:
        sc.BodyPartExamined = source.BodyPartExamined
    sc.ConversionType = "WSD"
    sc.SecondaryCaptureDeviceManufacturer = manufacturer
    sc.SecondaryCaptureDeviceManufacturerModelName = description_model.name[:64]
    sc.SecondaryCaptureDeviceSoftwareVersions = software_version
    sc.DateOfSecondaryCapture = DA(content_datetime.date())
    sc.TimeOfSecondaryCapture = TM(content_datetime.time())
    sc.BurnedInAnnotation = "NO"
    sc.DerivationDescription = derivation
    sc.SourceImageSequence = [_source_image_item(source, ref_frame)]
    pin_datetimes(sc, content_datetime)
    return sc


def encode_heatmap_sc(
    diagnosis: NMDiagnosis,
    source: pydicom.Dataset,
    *,
    content_datetime: datetime.datetime,
    software_version: str,
    manufacturer: str = DEFAULT_MANUFACTURER,
    series_number: int = SC_SERIES_NUMBER,
    instance_number: int | None = None,
) -> hd.sc.SCImage:
    """Render one diagnosis' Grad-CAM over its source frame as a Secondary Capture.

    Parameters
    ----------
    diagnosis : NMDiagnosis
        The result; its heatmap has the source frame's shape, values in [0, 1].
    source : pydicom.Dataset
        The source instance the diagnosis names, with pixel data.
    content_datetime : datetime.datetime
        Content Date/Time of the image (and every other time stamp in it).
    software_version : str
        Version of the node's software.
    manufacturer : str, optional
        Manufacturer of the node.
    series_number : int, optional
        Series Number; :data:`SC_SERIES_NUMBER` by default.
    instance_number : int, optional
        Instance Number; the source frame number (or 1) by default.

    Returns
    -------
    highdicom.sc.SCImage
        RGB secondary capture in the source study.

    Raises
    ------
    ValueError
        If the source is not the one the diagnosis names, the frame number is
        missing or out of range, or the heatmap's shape or values are wrong.
    """
    select_source([source], diagnosis.source)
    model = diagnosis.model
    frame, ref_frame = _frame(source, diagnosis.source.frame_number)
    heatmap = np.asarray(diagnosis.heatmap, dtype=np.float32)
    if heatmap.shape != frame.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from the frame's {frame.shape}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap holds NaN or infinite values")
    pixels = compose(
        blend(window_to_uint8(frame, _window(source)), np.clip(heatmap, 0.0, 1.0)),
        _legend(diagnosis, diagnosis.source.frame_number, number_of_frames(source)),
    )
    frame_key = f"frame={diagnosis.source.frame_number or 1}"
    uids = output_uids(
        ObjectKind.SC,
        source.StudyInstanceUID,
        [source.SOPInstanceUID],
        model.name,
        model.version,
        instance_key=frame_key,
    )
    sc = secondary_capture(
        source,
        pixels,
        uids=uids,
        models=[model],
        description_model=model,
        series_base=SC_SERIES_BASE,
        series_number=series_number,
        instance_number=instance_number or diagnosis.source.frame_number or 1,
        orientation=_patient_orientation(source),
        ref_frame=ref_frame,
        derivation=f"Grad-CAM of {model.name} {model.version} blended over the source frame",
        content_datetime=content_datetime,
        manufacturer=manufacturer,
        software_version=software_version,
    )
    logger.info(
        "encoded Grad-CAM SC %dx%d for model %s %s", sc.Columns, sc.Rows, model.name, model.version
    )
    return sc


# --- NM seed 001: cure after a first I-131 therapy ------------------------------------------


def _graves_legend(outcome: GravesOutcome, frame_number: int | None, frames: int) -> LegendText:
    model = outcome.model
    probability = float(np.clip(outcome.probability_cured, 0.0, 1.0))
    decision = "YES" if outcome.cured else "NO"
    relation = ">=" if outcome.cured else "<"
    where = f"frame {frame_number} of {frames}" if frames > 1 else "single frame"
    return LegendText(
        title=model.title,
        model_line=f"Model {model.name}, version {model.version}",
        rows=(LegendRow("P(cure after I-131)", probability, outcome.cured),),
        source_line=f"Source: {where}. AI output, not verified by a physician.",
        disclaimer=model.disclaimer,
        details=(
            f"Seed 001: probability of cure after I-131 {probability * 100:.1f} %, "
            f"threshold {outcome.threshold * 100:.1f} %",
        ),
        prediction=(
            f"Cured by first I-131 therapy: {decision} (p = {probability * 100:.1f}% {relation} "
            f"threshold {outcome.threshold * 100:.1f}%)"
        ),
    )


def encode_graves_sc(
    outcome: GravesOutcome,
    source: pydicom.Dataset,
    *,
    content_datetime: datetime.datetime,
    software_version: str,
    manufacturer: str = DEFAULT_MANUFACTURER,
    series_number: int = SC_GRAVES_SERIES_NUMBER,
    instance_number: int | None = None,
) -> hd.sc.SCImage:
    """Render one seed-001 outcome's Grad-CAM over its source frame as a Secondary Capture.

    Parameters
    ----------
    outcome : GravesOutcome
        The result; its heatmap has the source frame's shape, values in [0, 1].
    source : pydicom.Dataset
        The source instance the outcome names, with pixel data.
    content_datetime : datetime.datetime
        Content Date/Time of the image (and every other time stamp in it).
    software_version : str
        Version of the node's software.
    manufacturer : str, optional
        Manufacturer of the node.
    series_number : int, optional
        Series Number; :data:`SC_GRAVES_SERIES_NUMBER` by default.
    instance_number : int, optional
        Instance Number; the source frame number (or 1) by default.

    Returns
    -------
    highdicom.sc.SCImage
        RGB secondary capture in the source study, in a series of its own.

    Raises
    ------
    ValueError
        If the source is not the one the outcome names, the frame number is
        missing or out of range, or the heatmap's shape or values are wrong.
    """
    select_source([source], outcome.source)
    model = outcome.model
    frame, ref_frame = _frame(source, outcome.source.frame_number)
    heatmap = np.asarray(outcome.heatmap, dtype=np.float32)
    if heatmap.shape != frame.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from the frame's {frame.shape}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap holds NaN or infinite values")
    pixels = compose(
        blend(window_to_uint8(frame, _window(source)), np.clip(heatmap, 0.0, 1.0)),
        _graves_legend(outcome, outcome.source.frame_number, number_of_frames(source)),
    )
    uids = output_uids(
        ObjectKind.SC,
        source.StudyInstanceUID,
        [source.SOPInstanceUID],
        model.name,
        model.version,
        instance_key=f"i131-cure/frame={outcome.source.frame_number or 1}",
    )
    sc = secondary_capture(
        source,
        pixels,
        uids=uids,
        models=[model],
        description_model=model,
        series_base=SC_GRAVES_SERIES_BASE,
        series_number=series_number,
        instance_number=instance_number or outcome.source.frame_number or 1,
        orientation=_patient_orientation(source),
        ref_frame=ref_frame,
        derivation=(
            f"Grad-CAM (cured logit) of {model.name} {model.version} blended over the source frame"
        ),
        content_datetime=content_datetime,
        manufacturer=manufacturer,
        software_version=software_version,
    )
    logger.info(
        "encoded I-131 outcome SC %dx%d for model %s %s", sc.Columns, sc.Rows, model.name, model.version
    )
    return sc


# --- CT: one picture per lung lesion ----------------------------------------------------------


def _ct_slice(source: pydicom.Dataset, frame_number: int | None) -> np.ndarray:
    """One CT slice in HU (highdicom applies the rescale, top level or functional groups)."""
    if source.get("SamplesPerPixel", 1) != 1:
        raise ValueError("the heatmap encoder expects a monochrome source")
    # a shallow copy: from_dataset(copy=False) re-classes the object it is given, and a deep
    # copy of an Enhanced CT would copy every frame
    image = hd.Image.from_dataset(source.copy(), copy=False)
    return image.get_frame(
        frame_number or 1, apply_real_world_transform=False, apply_modality_transform=True
    )


def _orientation_cosines(source: pydicom.Dataset, frame_number: int | None) -> list[float] | None:
    if "ImageOrientationPatient" in source:
        return [float(v) for v in source.ImageOrientationPatient]
    groups = []
    if frame_number is not None and "PerFrameFunctionalGroupsSequence" in source:
        groups.append(source.PerFrameFunctionalGroupsSequence[frame_number - 1])
    groups.extend(source.get("SharedFunctionalGroupsSequence", []))
    for group in groups:
        if "PlaneOrientationSequence" in group:
            return [float(v) for v in group.PlaneOrientationSequence[0].ImageOrientationPatient]
    return None


def _ct_patient_orientation(
    source: pydicom.Dataset, frame_number: int | None
) -> tuple[str, str] | None:
    """Patient Orientation closest to the slice's Image Orientation (Patient)."""
    cosines = _orientation_cosines(source, frame_number)
    if cosines is None or len(cosines) != 6:
        return _patient_orientation(source)
    row, col = np.asarray(cosines[:3]), np.asarray(cosines[3:])
    try:
        closest = hd.spatial.get_closest_patient_orientation(
            np.column_stack([row, col, np.cross(row, col)])
        )
    except ValueError:  # not orthogonal
        return _patient_orientation(source)
    return closest[0].value, closest[1].value


def _lesion_outline(lesion: CTLesion, k: int, shape: tuple[int, int]) -> np.ndarray:
    """The lesion's mask on volume slice ``k``, on the slice's full (rows, cols) grid."""
    out = np.zeros(shape, dtype=bool)
    k0, r0, c0 = lesion.box_origin
    if not 0 <= k - k0 < lesion.mask.shape[0]:
        return out
    plane = lesion.mask[k - k0].astype(bool)
    rows = min(plane.shape[0], shape[0] - r0)
    cols = min(plane.shape[1], shape[1] - c0)
    out[r0 : r0 + rows, c0 : c0 + cols] = plane[:rows, :cols]
    return out


def _lesion_legend(lesion: CTLesion, results: CTResults, k: int, n_slices: int) -> LegendText:
    seg_model, cls_model = results.segmentation_model, results.classifier_model
    probability = float(np.clip(lesion.probability, 0.0, 1.0))
    decision = "YES" if lesion.refractory else "NO"
    relation = ">=" if lesion.refractory else "<"
    x, y, z = lesion.centre_mm
    return LegendText(
        title=cls_model.title,
        model_line=f"Model {cls_model.name}, version {cls_model.version}",
        rows=(LegendRow("P(RAI-refractory)", probability, lesion.refractory),),
        source_line=(
            f"Slice {k + 1} of {n_slices}, lung window. AI output, not verified by a physician."
        ),
        disclaimer=combined_model(seg_model, cls_model).disclaimer,
        details=(
            f"Lesion {lesion.index}, {lesion.side} lung: largest diameter "
            f"{lesion.diameter_mm:.1f} mm, volume {lesion.volume_mm3:.0f} mm3, "
            f"centre x {x:.1f} y {y:.1f} z {z:.1f} mm",
            f"Segmentation: {seg_model.name}, version {seg_model.version}; "
            "magenta outline = lesion mask on this slice",
        ),
        prediction=(
            f"RAI-refractory: {decision} (p = {probability * 100:.1f}% {relation} "
            f"threshold {lesion.threshold * 100:.0f}%)"
        ),
    )


def encode_lesion_sc(
    lesion: CTLesion,
    results: CTResults,
    sources: Sequence[pydicom.Dataset],
    *,
    content_datetime: datetime.datetime,
    manufacturer: str = DEFAULT_MANUFACTURER,
    software_version: str,
) -> hd.sc.SCImage:
    """Render one CT lesion's Grad-CAM over the axial slice through its centre.

    Parameters
    ----------
    lesion : CTLesion
        One of ``results.lesions``; its heatmap has the centre slice's (rows, columns).
    results : CTResults
        The study's results (series used, both models).
    sources : Sequence[pydicom.Dataset]
        The study's datasets; the centre slice's needs pixel data.
    content_datetime : datetime.datetime
        Content Date/Time (and every other time stamp).
    manufacturer : str, optional
        Manufacturer of the node.
    software_version : str
        Version of the node's software.

    Returns
    -------
    highdicom.sc.SCImage
        RGB secondary capture in the source study, series :data:`SC_SERIES_NUMBER`,
        Instance Number the lesion index.

    Raises
    ------
    ValueError
        If the lesion is not among the results, its centre slice is out of range, a
        source is missing, or the heatmap's shape or values are wrong.
    """
    series = check_lesions(results)
    if lesion.index > len(results.lesions) or results.lesions[lesion.index - 1] != lesion:
        raise ValueError(f"lesion {lesion.index} is not among the results' lesions")
    datasets = series_sources(series, sources)
    k = lesion.centre_slice
    if not 0 <= k < len(datasets):
        raise ValueError(f"centre slice {k} outside 0..{len(datasets) - 1}")
    source, frame_number = datasets[k], series.slices[k].frame_number
    hu = _ct_slice(source, frame_number)
    heatmap = np.asarray(lesion.heatmap, dtype=np.float32)
    if heatmap.shape != hu.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from the slice's {hu.shape}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap holds NaN or infinite values")
    pixels = compose(
        blend(
            window_to_uint8(hu, LUNG_WINDOW),
            np.clip(heatmap, 0.0, 1.0),
            outline=_lesion_outline(lesion, k, hu.shape),
        ),
        _lesion_legend(lesion, results, k, len(datasets)),
    )
    model = combined_model(results.segmentation_model, results.classifier_model)
    uids = output_uids(
        ObjectKind.SC,
        results.study_instance_uid,
        [s.sop_instance_uid for s in series.slices],
        model.name,
        model.version,
        instance_key=f"lesion={lesion.index}",
    )
    sc = secondary_capture(
        source,
        pixels,
        uids=uids,
        models=[results.segmentation_model, results.classifier_model],
        description_model=model,
        series_base=SC_CT_SERIES_BASE,
        series_number=SC_SERIES_NUMBER,
        instance_number=lesion.index,
        orientation=_ct_patient_orientation(source, frame_number),
        ref_frame=frame_number if "NumberOfFrames" in source else None,
        derivation=(
            f"3D Grad-CAM of {results.classifier_model.name} {results.classifier_model.version} "
            f"for lesion {lesion.index}, blended over the axial slice through its centre"
        ),
        content_datetime=content_datetime,
        manufacturer=manufacturer,
        software_version=software_version,
    )
    logger.info(
        "encoded lesion SC %dx%d for lesion %d, models %s",
        sc.Columns,
        sc.Rows,
        lesion.index,
        model.name,
    )
    return sc
