"""Routing: which pipeline (and Celery queue) takes which series. Pure functions over typed data."""

from __future__ import annotations

import re
from dataclasses import dataclass

from config.settings import Rule
from dicom_node.spool import SeriesInfo, StudyManifest


@dataclass(frozen=True)
class Route:
    """One rule's share of a study: the series it matched, for one pipeline."""

    name: str  # the rule's name, also the job's output folder
    pipeline: str
    queue: str
    series: tuple[str, ...]  # Series Instance UIDs

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "pipeline": self.pipeline, "queue": self.queue, "series": list(self.series)}


def _matches(rule: Rule, series: SeriesInfo, calling_ae: str) -> bool:
    m = rule.match
    if m.modality and series.modality.upper() not in {v.upper() for v in m.modality}:
        return False
    if m.sop_class_uid and series.sop_class_uid not in m.sop_class_uid:
        return False
    if m.body_part and series.body_part.upper() not in {v.upper() for v in m.body_part}:
        return False
    if m.series_description is not None and not re.search(m.series_description, series.series_description, re.I):
        return False
    if m.calling_ae and calling_ae not in m.calling_ae:
        return False
    return True


def route(manifest: StudyManifest, rules: list[Rule]) -> list[Route]:
    """The routes a study takes: one per rule that matched at least one series.

    A series may feed several rules (two models of one modality). Order follows the rules.
    """
    routes = []
    for rule in rules:
        matched = tuple(
            uid for uid, info in sorted(manifest.series.items()) if _matches(rule, info, manifest.calling_ae)
        )
        if matched:
            routes.append(Route(rule.name, rule.pipeline, rule.queue, matched))
    return routes


def explain_no_route(manifest: StudyManifest, rules: list[Rule]) -> str:
    """A human-readable reason for a study no rule took (stored with the ignored study)."""
    seen = sorted({f"{s.modality or '?'}/{s.body_part or '-'}" for s in manifest.series.values()})
    if not rules:
        return "no routing rules are configured"
    return f"no rule matched series of modality/body part {', '.join(seen)} from calling AE {manifest.calling_ae!r}"
