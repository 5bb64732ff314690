"""Output classes of ct_lung_met_rai's classifier and their codes.

The classifier gives one probability per lesion: that the metastasis is RAI-refractory
(non-iodine-avid). No SNOMED CT concept for "radioiodine-refractory" or "iodine-avid" could be
confirmed offline, so both carry codes of the node's private scheme ``99THYAI`` (declared in
every SR's Coding Scheme Identification Sequence) rather than guessed SNOMED CT numbers; a site's
bundle may carry its own codes in its card.
"""

from __future__ import annotations

from typing import Final

from model_zoo.card import Label

CT_LABELS: Final[tuple[Label, ...]] = (
    Label(key="refractory", code_value="RAI-REFRACTORY", coding_scheme="99THYAI",
          code_meaning="RAI-refractory (non-iodine-avid) metastasis"),
    Label(key="avid", code_value="RAI-AVID", coding_scheme="99THYAI", code_meaning="Iodine-avid metastasis"),
)
