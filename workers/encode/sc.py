"""Grad-CAM heatmap of one NM diagnosis as a Secondary Capture image.

The picture (see :mod:`workers.encode.heatmap_render`) is the source frame
windowed to 8 bit, upscaled to 512 pixels on its long side, with the Grad-CAM
map blended in colour and a legend burned in: model title and version,
predicted class and probability, every class probability, a colour bar and,
for demo models, "DEMO - not for clinical use" in red above the image and
below the legend.

DICOM choices
-------------
* SOP class Secondary Capture Image, RGB, 8 bit, Explicit VR Little Endian
  passed explicitly (highdicom's two constructors default differently).
* Conversion Type ``WSD`` (workstation): the image is rendered by software,
  not digitised from film or video.
* Same study as the source (patient and study modules copied from it), new
  series; Series/SOP Instance UIDs derived from study, source, model name and
  version, the SOP Instance UID also from the frame number
  (:mod:`workers.encode.uids`): a re-run replaces, it never duplicates.
* Series Number :data:`SC_SERIES_NUMBER` unless given; Instance Number the
  source frame number (1 for single-frame sources) unless given.
* Source Image Sequence: the source's SOP class and instance, purpose
  (121322, DCM, "Source image for image processing operation"), and the
  Referenced Frame Number when the source is multi-frame.
* Body Part Examined and Patient Orientation copied from the source (without
  Body Part Examined, dciodvfy asks for Laterality).  A source with no
  usable Patient Orientation gives an SC whose Patient Orientation is empty
  (Type 2).
* Burned In Annotation ``NO``: the legend names the model and its output,
  never the patient.
* Content, Instance Creation, Secondary Capture and Contribution times all
  come from ``content_datetime``: the same input gives a byte-identical file.
"""

from __future__ import annotations

import datetime
import logging
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
    number_of_frames,
    pin_datetimes,
    processing_equipment,
    select_source,
    series_description,
)
from workers.encode.heatmap_render import LegendRow, LegendText, blend, compose, window_to_uint8
from workers.encode.uids import ObjectKind, output_uids
from workers.pipelines.results import NMDiagnosis

logger = logging.getLogger(__name__)

#: Series Number of the heatmap series: after the SR's 9901, fixed.
SC_SERIES_NUMBER: Final[int] = 9902
SC_SERIES_BASE: Final[str] = "AI thyroid Grad-CAM"
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
    orientation = _patient_orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=instance_number or diagnosis.source.frame_number or 1,
        manufacturer=manufacturer,
        patient_orientation=orientation or ("A", "F"),  # placeholder, emptied below
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[
            processing_equipment(
                model,
                manufacturer=manufacturer,
                software_version=software_version,
                content_datetime=content_datetime,
            )
        ],
        series_description=series_description(SC_SERIES_BASE, model),
        manufacturer_model_name=model.name,
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
    sc.SecondaryCaptureDeviceManufacturerModelName = model.name
    sc.SecondaryCaptureDeviceSoftwareVersions = software_version
    sc.DateOfSecondaryCapture = DA(content_datetime.date())
    sc.TimeOfSecondaryCapture = TM(content_datetime.time())
    sc.BurnedInAnnotation = "NO"
    sc.DerivationDescription = (
        f"Grad-CAM of {model.name} {model.version} blended over the source frame"
    )
    sc.SourceImageSequence = [_source_image_item(source, ref_frame)]
    pin_datetimes(sc, content_datetime)
    logger.info(
        "encoded Grad-CAM SC %dx%d for model %s %s", sc.Columns, sc.Rows, model.name, model.version
    )
    return sc
