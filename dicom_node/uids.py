"""UID checks: an incoming UID is validated before it is ever used in a path."""

from __future__ import annotations

import hashlib
import re

# PS3.5 9.1: components of digits, no leading zero (except "0" itself), dots between, <= 64 chars.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_valid_uid(value: object) -> bool:
    """True if ``value`` is a syntactically valid DICOM UID."""
    return isinstance(value, str) and len(value) <= 64 and bool(_UID_RE.match(value))


def study_key(study_instance_uid: str) -> str:
    """A short, stable, non-identifying key for logs (never log the UID itself)."""
    return hashlib.sha256(study_instance_uid.encode("ascii")).hexdigest()[:12]
