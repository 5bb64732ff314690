"""Output classes of nm_thyroid_dx and their SNOMED CT codes, in network output order.

Graves' disease 353295004 and Normal 17621005 are checked against public code lists / pydicom's
SCT dictionary; subacute thyroiditis 4997005 and neoplasm of thyroid gland 126873006 are the
SNOMED CT concepts as recalled by the author and could not be confirmed against an authoritative
browser offline: confirm them before clinical use.
"""

from __future__ import annotations

from typing import Final

from model_zoo.card import Label

NM_THYROID_LABELS: Final[tuple[Label, ...]] = (
    Label(key="graves", code_value="353295004", coding_scheme="SCT", code_meaning="Graves' disease"),
    Label(
        key="subacute_thyroiditis",
        code_value="4997005",
        coding_scheme="SCT",
        code_meaning="Subacute thyroiditis",
    ),
    Label(
        key="thyroid_tumour",
        code_value="126873006",
        coding_scheme="SCT",
        code_meaning="Neoplasm of thyroid gland",
    ),
    Label(key="normal", code_value="17621005", coding_scheme="SCT", code_meaning="Normal"),
)
