"""What every encoder shares: equipment, pinned times, series descriptions.

highdicom stamps a few attributes with the wall clock (Instance Creation
Date/Time, its own Contributing Equipment item, the SC's Date/Time of
Secondary Capture).  The encoders overwrite them with the caller's
``content_datetime`` (:func:`pin_datetimes`), so that the same input always
gives byte-identical output.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Sequence
from typing import Final

import highdicom as hd
import pydicom
from pydicom.valuerep import DA, DT, TM

from workers.encode.codes import PROCESSING_EQUIPMENT
from workers.pipelines.results import CTSeriesUsed, ModelInfo, SourceImage

logger = logging.getLogger(__name__)

DEFAULT_MANUFACTURER: Final[str] = "Thyroid AI Node"
_LO_MAX: Final[int] = 64


def processing_equipment(
    model: ModelInfo,
    *,
    manufacturer: str,
    software_version: str,
    content_datetime: datetime.datetime,
) -> hd.ContributingEquipment:
    """Contributing Equipment item naming this node and the model (IHE AI Results).

    Parameters
    ----------
    model : ModelInfo
        The model that produced the result: its name becomes the Manufacturer's
        Model Name, title, version, weights checksum and disclaimer the
        Contribution Description.
    manufacturer : str
        Manufacturer of the node.
    software_version : str
        Version of the node's software.
    content_datetime : datetime.datetime
        When the result was produced (Contribution DateTime).

    Returns
    -------
    highdicom.ContributingEquipment
        Purpose of Reference (109102, DCM, "Processing Equipment").
    """
    description = (
        f"{model.title}, version {model.version}, weights sha256 {model.weights_sha256[:16]}"
    )
    if model.disclaimer:
        description = f"{model.disclaimer}. {description}"
    return hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=model.name,
        software_versions=software_version,
        contribution_datetime=content_datetime,
        contribution_description=description[:1024],
    )


def pin_datetimes(dataset: pydicom.Dataset, content_datetime: datetime.datetime) -> None:
    """Replace the wall-clock stamps highdicom wrote with ``content_datetime``.

    Sets Instance Creation Date/Time and the Contribution DateTime of every
    processing-equipment item (highdicom adds one for itself, stamped *now*).
    Acquisition-equipment items keep the source's own acquisition time.

    Parameters
    ----------
    dataset : pydicom.Dataset
        A freshly constructed highdicom object; changed in place.
    content_datetime : datetime.datetime
        The time to write.
    """
    dataset.InstanceCreationDate = DA(content_datetime.date())
    dataset.InstanceCreationTime = TM(content_datetime.time())
    for item in dataset.get("ContributingEquipmentSequence", []):
        purposes = item.get("PurposeOfReferenceCodeSequence", [])
        if any(p.CodeValue == PROCESSING_EQUIPMENT.value for p in purposes):
            item.ContributionDateTime = DT(content_datetime)


def series_description(base: str, model: ModelInfo) -> str:
    """Series Description with the model version and, for demo models, the disclaimer.

    Parameters
    ----------
    base : str
        What the series holds, e.g. ``"AI thyroid scintigraphy"``.
    model : ModelInfo
        Its version is appended; its disclaimer is put first when demo, so
        that a narrow series list still shows it.

    Returns
    -------
    str
        At most 64 characters (LO).  When too long the version goes first
        (it is in the equipment attributes too), then the base is cut; the
        disclaimer is never cut.
    """
    prefix = f"{model.disclaimer} - " if model.disclaimer else ""
    for text in (f"{prefix}{base} {model.version}", f"{prefix}{base}"):
        if len(text) <= _LO_MAX:
            return text
    logger.debug("series description cut to %d characters", _LO_MAX)
    return f"{prefix}{base}"[:_LO_MAX]


def select_source(sources: Sequence[pydicom.Dataset], wanted: SourceImage) -> pydicom.Dataset:
    """The source dataset a result names, checked for study and series.

    Parameters
    ----------
    sources : Sequence[pydicom.Dataset]
        Candidate source datasets.
    wanted : SourceImage
        The instance a result was computed from.

    Returns
    -------
    pydicom.Dataset
        The dataset with that SOP Instance UID.

    Raises
    ------
    ValueError
        If none matches, or the match lies in another study or series.
    """
    for ds in sources:
        if ds.SOPInstanceUID == wanted.sop_instance_uid:
            if (
                ds.StudyInstanceUID != wanted.study_instance_uid
                or ds.SeriesInstanceUID != wanted.series_instance_uid
            ):
                raise ValueError(
                    f"source {wanted.sop_instance_uid} is filed under another study or series"
                )
            return ds
    raise ValueError(f"no source dataset given for SOP instance {wanted.sop_instance_uid}")


def number_of_frames(dataset: pydicom.Dataset) -> int:
    """Number of frames of an image dataset (1 when the attribute is absent or empty)."""
    value = dataset.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def combined_model(segmentation: ModelInfo, classifier: ModelInfo) -> ModelInfo:
    """One identity for an output made by two models (the CT SR and heatmap SCs).

    Parameters
    ----------
    segmentation, classifier : ModelInfo
        The CT pipeline's two models.

    Returns
    -------
    ModelInfo
        Name ``"<seg>+<cls>"``, version ``"<seg version>+<cls version>"`` (one
        version when both are equal), checksum of both checksums, demo when
        either model is; used for UIDs, the device observer and the Series
        Description.
    """
    if segmentation.version == classifier.version:
        version = segmentation.version
    else:
        version = f"{segmentation.version}+{classifier.version}"
    digest = hashlib.sha256(
        f"{segmentation.weights_sha256}:{classifier.weights_sha256}".encode()
    ).hexdigest()
    return ModelInfo(
        name=f"{segmentation.name}+{classifier.name}",
        version=version,
        title=f"{segmentation.title}; {classifier.title}",
        weights_sha256=digest,
        demo=segmentation.demo or classifier.demo,
    )


def series_sources(
    series: CTSeriesUsed, sources: Sequence[pydicom.Dataset]
) -> list[pydicom.Dataset]:
    """The datasets of a CT series used, one per slice (an Enhanced CT repeats its one dataset).

    Parameters
    ----------
    series : CTSeriesUsed
        The series the pipeline analysed.
    sources : Sequence[pydicom.Dataset]
        The study's datasets.

    Returns
    -------
    list[pydicom.Dataset]
        ``result[k]`` holds volume slice ``k``.

    Raises
    ------
    ValueError
        If a slice's instance is missing, lies in another study or series, or
        a multi-frame slice names no frame or one out of range.
    """
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    out = []
    for k, image in enumerate(series.slices):
        if image.series_instance_uid != series.series_instance_uid:
            raise ValueError(f"slice {k} names another series than the series used")
        ds = by_uid.get(image.sop_instance_uid)
        ds = select_source([ds] if ds is not None else [], image)
        frames = number_of_frames(ds)
        if frames > 1 and image.frame_number is None:
            raise ValueError(f"slice {k}: a multi-frame source but no frame number")
        if image.frame_number is not None and not 1 <= image.frame_number <= frames:
            raise ValueError(f"slice {k}: frame {image.frame_number} outside 1..{frames}")
        out.append(ds)
    return out
