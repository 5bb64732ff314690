"""Reading back what the node sent: SR content items and references (for assertions)."""

from __future__ import annotations

from collections.abc import Iterator

from pydicom import Dataset

FINDING = ("121071", "DCM")


def walk(items: Dataset | list[Dataset]) -> Iterator[Dataset]:
    """Every content item of an SR, depth first."""
    seq = items.get("ContentSequence", []) if isinstance(items, Dataset) else items
    for item in seq:
        yield item
        yield from walk(item)


def concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator)


def findings(sr: Dataset) -> list[str]:
    """Code values of every 'Finding' (DCM 121071) row."""
    return [str(i.ConceptCodeSequence[0].CodeValue) for i in walk(sr) if "ConceptNameCodeSequence" in i and concept(i) == FINDING]


def numeric_values(sr: Dataset) -> dict[str, float]:
    """Concept meaning -> value of every NUM row."""
    out = {}
    for item in walk(sr):
        if item.get("ValueType") == "NUM":
            out[str(item.ConceptNameCodeSequence[0].CodeMeaning)] = float(item.MeasuredValueSequence[0].NumericValue)
    return out


def referenced_sop_instances(sr: Dataset) -> set[str]:
    """SOP Instance UIDs referenced by IMAGE rows and by the evidence sequences."""
    refs = {str(r.ReferencedSOPInstanceUID) for i in walk(sr) for r in i.get("ReferencedSOPSequence", [])}
    for seq_name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(seq_name, []):
            for series in study.ReferencedSeriesSequence:
                refs |= {str(r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence}
    return refs


def text_values(sr: Dataset) -> list[str]:
    return [str(i.TextValue) for i in walk(sr) if i.get("ValueType") == "TEXT"]


CORNERSTONE_TAG = "Cornerstone3DTools@^0.1.0:"


def viewer_measurements(sr: Dataset) -> dict[str, tuple[str, str]]:
    """Tracking UID -> (viewer tool, label) of every measurement group that names a tool.

    The tool is what OHIF loads the group as (the Tracking Identifier
    ``Cornerstone3DTools@^0.1.0:<Tool>:<name>``), the label the group's Comment (121106, DCM).
    """
    out = {}
    for item in walk(sr):
        content = item.get("ContentSequence", [])
        rows = {concept(c): c for c in content if "ConceptNameCodeSequence" in c}
        identifier = rows.get(("112039", "DCM"))
        uid = rows.get(("112040", "DCM"))
        if identifier is None or uid is None or not str(identifier.TextValue).startswith(CORNERSTONE_TAG):
            continue
        tool = str(identifier.TextValue)[len(CORNERSTONE_TAG):].split(":")[0]
        comment = rows.get(("121106", "DCM"))
        out[str(uid.UID)] = (tool, str(comment.TextValue) if comment is not None else "")
    return out


def scoords(item: Dataset) -> list[Dataset]:
    """SCOORD children (INFERRED FROM) of the NUM rows directly in a group, first NUM first."""
    return [c for num in item.get("ContentSequence", []) if num.get("ValueType") == "NUM"
            for c in num.get("ContentSequence", []) if c.get("ValueType") == "SCOORD"]
