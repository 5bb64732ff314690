"""Deterministic UIDs: same input, same UID; anything that matters changes it."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from workers.encode.uids import ObjectKind, derive_uid, device_uid, output_uids, tracking_uid

STUDY = "1.2.3.4"
SOURCES = ["1.2.3.4.5.2", "1.2.3.4.5.1"]


def test_derive_uid_is_deterministic_and_valid() -> None:
    uid = derive_uid("a", "b")
    assert uid == derive_uid("a", "b")
    assert UID(uid).is_valid
    assert len(uid) <= 64


def test_derive_uid_separates_parts() -> None:
    assert derive_uid("ab", "c") != derive_uid("a", "bc")
    assert derive_uid("a", "b") != derive_uid("b", "a")


def test_derive_uid_rejects_nothing_and_non_strings() -> None:
    with pytest.raises(ValueError):
        derive_uid()
    with pytest.raises(TypeError):
        derive_uid("a", 1)  # type: ignore[arg-type]


def test_output_uids_ignore_source_order_and_duplicates() -> None:
    a = output_uids(ObjectKind.SR, STUDY, SOURCES, "m", "1")
    b = output_uids(ObjectKind.SR, STUDY, list(reversed(SOURCES)) + SOURCES[:1], "m", "1")
    assert a == b
    assert a.series_instance_uid != a.sop_instance_uid


@pytest.mark.parametrize(
    "changed",
    [
        {"kind": ObjectKind.SC},
        {"study": "1.2.3.5"},
        {"sources": SOURCES[:1]},
        {"model_name": "other"},
        {"model_version": "2"},
    ],
)
def test_output_uids_change_with_what_matters(changed: dict[str, object]) -> None:
    args: dict[str, object] = {
        "kind": ObjectKind.SR,
        "study": STUDY,
        "sources": SOURCES,
        "model_name": "m",
        "model_version": "1",
    }
    base = output_uids(ObjectKind.SR, STUDY, SOURCES, "m", "1")
    args.update(changed)
    other = output_uids(
        args["kind"],  # type: ignore[arg-type]
        args["study"],  # type: ignore[arg-type]
        args["sources"],  # type: ignore[arg-type]
        args["model_name"],  # type: ignore[arg-type]
        args["model_version"],  # type: ignore[arg-type]
    )
    assert other.series_instance_uid != base.series_instance_uid
    assert other.sop_instance_uid != base.sop_instance_uid


def test_instance_key_changes_the_instance_only() -> None:
    a = output_uids(ObjectKind.SC, STUDY, SOURCES, "m", "1", instance_key="frame=1")
    b = output_uids(ObjectKind.SC, STUDY, SOURCES, "m", "1", instance_key="frame=2")
    assert a.series_instance_uid == b.series_instance_uid
    assert a.sop_instance_uid != b.sop_instance_uid


def test_output_uids_need_a_source() -> None:
    with pytest.raises(ValueError):
        output_uids(ObjectKind.SR, STUDY, [], "m", "1")


def test_device_and_tracking_uids() -> None:
    assert device_uid("m", "1", "aa") == device_uid("m", "1", "aa")
    assert device_uid("m", "1", "aa") != device_uid("m", "1", "bb")
    assert tracking_uid("1.2", "x") != tracking_uid("1.2", "y")
