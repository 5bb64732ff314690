"""Completeness and routing: table tests, no clock, no disk."""

from __future__ import annotations

import pytest

from config.settings import Match, Rule
from dicom_node.complete import CompletenessPolicy, is_complete
from dicom_node.route import explain_no_route, route
from dicom_node.spool import SeriesInfo, StudyManifest

POLICY = CompletenessPolicy(quiet_period_s=10, forced_limit_s=100)


def _manifest(first: float, last: float, n: int = 1) -> StudyManifest:
    return StudyManifest("1.2.3", "PACS", first, last, {"1.2.3.4": SeriesInfo("NM", instances=[f"1.2.3.4.{i}" for i in range(n)])})


@pytest.mark.parametrize(
    "first, last, now, expected",
    [
        (0, 0, 5, False),  # still inside the quiet period
        (0, 0, 10, True),  # quiet period reached exactly
        (0, 8, 17.9, False),  # a late instance restarts the quiet period
        (0, 8, 18, True),
        (0, 95, 99, False),  # trickling in, under the forced limit
        (0, 95, 100, True),  # forced limit reached although not quiet
    ],
)
def test_is_complete(first: float, last: float, now: float, expected: bool) -> None:
    assert is_complete(_manifest(first, last), now, POLICY) is expected


def test_empty_study_never_complete() -> None:
    assert not is_complete(_manifest(0, 0, n=0), 1000, POLICY)


def _study(*series: SeriesInfo, calling: str = "PACS") -> StudyManifest:
    return StudyManifest("1.2.3", calling, 0, 0, {f"1.2.3.{i}": s for i, s in enumerate(series)})


NM = SeriesInfo("NM", "1.2.840.10008.5.1.4.1.1.20", "THYROID", "Tc99m thyroid ANT")
CT = SeriesInfo("CT", "1.2.840.10008.5.1.4.1.1.2", "CHEST", "Chest 1.0 B50f")
CT_LOC = SeriesInfo("CT", "1.2.840.10008.5.1.4.1.1.2", "CHEST", "Topogram")
US = SeriesInfo("US", "1.2.840.10008.5.1.4.1.1.6.1", "NECK", "Thyroid")

RULES = [
    Rule(name="nm", match=Match(modality=["NM"]), pipeline="nm_thyroid_dx", queue="nm"),
    Rule(name="ct", match=Match(modality=["CT"], body_part=["chest"], series_description=r"^(?!.*topogram)"), pipeline="ct", queue="ct"),
    Rule(name="us-from-x", match=Match(modality=["US"], calling_ae=["US_CART"]), pipeline="us", queue="us"),
]


@pytest.mark.parametrize(
    "study, expected",
    [
        (_study(NM), [("nm", ("1.2.3.0",))]),
        (_study(CT, CT_LOC), [("ct", ("1.2.3.0",))]),  # the localizer is not taken
        (_study(NM, CT), [("nm", ("1.2.3.0",)), ("ct", ("1.2.3.1",))]),  # one study, two routes
        (_study(US), []),  # US only from US_CART
        (_study(US, calling="US_CART"), [("us-from-x", ("1.2.3.0",))]),
        (_study(CT_LOC), []),
    ],
)
def test_route_table(study: StudyManifest, expected: list[tuple[str, tuple[str, ...]]]) -> None:
    assert [(r.name, r.series) for r in route(study, RULES)] == expected


def test_route_by_sop_class_and_queue() -> None:
    rules = [Rule(name="sc", match=Match(sop_class_uid=["1.2.840.10008.5.1.4.1.1.20"]), pipeline="p", queue="nm")]
    (r,) = route(_study(NM), rules)
    assert (r.pipeline, r.queue) == ("p", "nm")


def test_unrouted_study_has_a_reason() -> None:
    why = explain_no_route(_study(US), RULES)
    assert "US/NECK" in why and "PACS" in why
    assert explain_no_route(_study(US), []) == "no routing rules are configured"
