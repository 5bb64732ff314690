"""Deterministic UIDs for everything the encoders write.

Every UID an encoder puts into an output object is a hash of what the object
*is*: the source study, the sorted source SOP instance UIDs, the model name and
version and the object kind.  Encoding the same input twice therefore yields
the same Series/SOP Instance UIDs, so that a re-run *replaces* the earlier
object in the PACS instead of adding a duplicate; a new model version yields
new UIDs, so results of different versions live side by side.

:func:`pydicom.uid.generate_uid` hashes ``"".join(entropy_srcs)``, which would
make ``("ab", "c")`` and ``("a", "bc")`` collide; :func:`derive_uid` therefore
length-prefixes each part before hashing.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from pydicom.uid import generate_uid

logger = logging.getLogger(__name__)

#: Namespace mixed into every derived UID, so that no other system hashing the
#: same strings with pydicom's prefix ends up with our UIDs.
UID_NAMESPACE: Final[str] = "thyroid-ai-node/encode/v1"


class ObjectKind(enum.StrEnum):
    """The kinds of object the encoders write (one encoder module each)."""

    SR = "sr"
    SC = "sc"
    SEG = "seg"


@dataclass(frozen=True)
class OutputUIDs:
    """Series and SOP Instance UID of one output object."""

    series_instance_uid: str
    sop_instance_uid: str


def derive_uid(*parts: str) -> str:
    """Derive a UID deterministically from an ordered list of strings.

    Parameters
    ----------
    *parts : str
        What the UID identifies; order matters.  At least one part.

    Returns
    -------
    str
        A valid DICOM UID (pydicom's root, at most 64 characters).

    Raises
    ------
    ValueError
        If no part is given.
    TypeError
        If a part is not a string.
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"UID parts must be str, got {type(part).__name__}")
    sources = [UID_NAMESPACE, *(f"{len(p)}:{p}" for p in parts)]
    return str(generate_uid(entropy_srcs=sources))


def _sorted_sources(source_sop_instance_uids: Iterable[str]) -> list[str]:
    sources = sorted(set(source_sop_instance_uids))
    if not sources:
        raise ValueError("an output object needs at least one source SOP instance UID")
    return sources


def output_uids(
    kind: ObjectKind,
    study_instance_uid: str,
    source_sop_instance_uids: Iterable[str],
    model_name: str,
    model_version: str,
    *,
    instance_key: str = "",
) -> OutputUIDs:
    """Series and SOP Instance UIDs of one output object.

    Parameters
    ----------
    kind : ObjectKind
        Which kind of object (SR, SC, SEG): each kind gets its own series.
    study_instance_uid : str
        The source study; the output goes into it.
    source_sop_instance_uids : Iterable[str]
        The source instances the object was computed from; order and
        duplicates do not matter.
    model_name, model_version : str
        The model that produced the result.
    instance_key : str, optional
        Tells apart several instances of one kind computed from the same
        sources (e.g. one heatmap per frame of a multi-frame source); it
        enters the SOP Instance UID only, not the Series Instance UID.

    Returns
    -------
    OutputUIDs
        Deterministic Series and SOP Instance UID.
    """
    sources = _sorted_sources(source_sop_instance_uids)
    common = (ObjectKind(kind).value, study_instance_uid, model_name, model_version, *sources)
    uids = OutputUIDs(
        series_instance_uid=derive_uid("series", *common),
        sop_instance_uid=derive_uid("instance", instance_key, *common),
    )
    logger.debug("derived %s UIDs from %d source(s)", kind, len(sources))
    return uids


def device_uid(model_name: str, model_version: str, weights_sha256: str) -> str:
    """UID of the algorithm as an SR device observer (one per model build).

    Parameters
    ----------
    model_name, model_version : str
        Identity of the model.
    weights_sha256 : str
        Checksum of the weights: other weights are another device.

    Returns
    -------
    str
        Deterministic device UID.
    """
    return derive_uid("device", model_name, model_version, weights_sha256)


def tracking_uid(sop_instance_uid: str, group_key: str) -> str:
    """Tracking Unique Identifier of one SR measurement group.

    Parameters
    ----------
    sop_instance_uid : str
        The SR document the group belongs to.
    group_key : str
        Names the group within the document (e.g. source instance and frame).

    Returns
    -------
    str
        Deterministic tracking UID.
    """
    return derive_uid("tracking", sop_instance_uid, group_key)


def lesion_tracking_uid(
    study_instance_uid: str,
    series_instance_uid: str,
    model_name: str,
    model_version: str,
    lesion_index: int,
) -> str:
    """Tracking UID of one CT lesion, shared by its SEG segment and its SR group.

    Both encoders call this function, so that a viewer can match the segment
    (Tracking UID in the Segment Sequence) with the measurement group (Tracking
    Unique Identifier) of the same lesion.

    Parameters
    ----------
    study_instance_uid : str
        The source study.
    series_instance_uid : str
        The CT series the lesion was found in.
    model_name, model_version : str
        The segmentation model that found the lesion.
    lesion_index : int
        The lesion's 1-based index (its segment number).

    Returns
    -------
    str
        Deterministic tracking UID.
    """
    return derive_uid(
        "lesion-tracking",
        study_instance_uid,
        series_instance_uid,
        model_name,
        model_version,
        str(int(lesion_index)),
    )
