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
