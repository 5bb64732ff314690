"""DIMSE status codes the node returns, as named constants (PS3.4 Annex B, PS3.7 Annex C)."""

SUCCESS = 0x0000
# C-STORE failures
OUT_OF_RESOURCES = 0xA700  # could not store: write failed or disk under the watermark
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000  # missing or invalid Study/Series/SOP Instance UID, undecodable dataset
# Warnings a peer may return to our C-STOREs that still mean "stored"
COERCION_OF_DATA_ELEMENTS = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007

STORED_STATUSES = frozenset(
    {SUCCESS, COERCION_OF_DATA_ELEMENTS, ELEMENTS_DISCARDED, DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING}
)
