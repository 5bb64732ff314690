"""Reading the few header values the node routes on, without touching pixel data."""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicom_node.spool import InstanceMeta
from dicom_node.uids import is_valid_uid

log = logging.getLogger(__name__)


class HeaderError(ValueError):
    """The dataset lacks a UID the node needs, or holds an invalid one."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def meta_from_dataset(ds: Dataset) -> InstanceMeta:
    """Take and validate the UIDs and routing values of a dataset.

    Raises
    ------
    HeaderError
        A Study, Series or SOP Instance UID (or the SOP Class UID) is missing or invalid.
    """
    uids = {}
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = ds.get(keyword)
        if value is None or value == "":
            raise HeaderError(f"{keyword} missing")
        value = str(value).strip("\x00 ")
        if not is_valid_uid(value):
            raise HeaderError(f"{keyword} is not a valid UID")
        uids[keyword] = value
    return InstanceMeta(
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        modality=_text(ds, "Modality").upper(),
        body_part=_text(ds, "BodyPartExamined").upper(),
        series_description=_text(ds, "SeriesDescription"),
    )


def read_meta(path: Path) -> InstanceMeta | None:
    """Header values of a stored file, or None (logged) if it cannot be read."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
        return meta_from_dataset(ds)
    except (OSError, InvalidDicomError, HeaderError, ValueError) as exc:
        log.warning("unreadable spool file %s: %s", path.name, exc)
        return None
