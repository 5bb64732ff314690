"""Typed errors of the model zoo."""

from __future__ import annotations


class ModelZooError(Exception):
    """Base class of the model zoo's errors."""


class BundleError(ModelZooError):
    """A model bundle is missing, malformed, or its weights fail their checksum."""


class InputRejected(ModelZooError):
    """An image the model cannot use; retrying will not help.

    Parameters
    ----------
    reason : str
        Why, in words fit for a log line or a report (no patient identifiers).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
