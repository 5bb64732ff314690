"""Output classes of nm_thyroid_dx and their codes, in network output order.

Only codes that could be checked are written as SNOMED CT ("SCT"):

* Graves' disease 353295004 (public code lists) and Normal 17621005 (DICOM PS3.16's SNOMED
  subset, as shipped in pydicom's SCT dictionary).
* The seed study's "thyroid tumour" class is a hot or cold nodule on the scintigram; the scan
  cannot tell a neoplasm from other masses, so it is coded as the finding SCT 237557003
  "Mass of thyroid gland" (checked in a SNOMED CT browser: finding site thyroid structure,
  morphology mass).
* No SNOMED CT code for subacute thyroiditis could be confirmed offline, so it carries a code
  of the node's private scheme ``99THYAI`` (declared in every SR's Coding Scheme Identification
  Sequence) rather than a guessed SNOMED CT number. A site's own bundle may carry its own codes:
  the card is where they come from.
"""

from __future__ import annotations

from typing import Final

from model_zoo.card import Label

NM_THYROID_LABELS: Final[tuple[Label, ...]] = (
    Label(key="graves", code_value="353295004", coding_scheme="SCT", code_meaning="Graves' disease"),
    Label(
        key="subacute_thyroiditis",
        code_value="SUBAC-THYROIDITS",
        coding_scheme="99THYAI",
        code_meaning="Subacute thyroiditis",
    ),
    Label(
        key="thyroid_tumour",
        code_value="237557003",
        coding_scheme="SCT",
        code_meaning="Mass of thyroid gland",
    ),
    Label(key="normal", code_value="17621005", coding_scheme="SCT", code_meaning="Normal"),
)
