"""When is a study complete? A pure function of its manifest, the clock and the policy."""

from __future__ import annotations

from dataclasses import dataclass

from dicom_node.spool import StudyManifest


@dataclass(frozen=True)
class CompletenessPolicy:
    quiet_period_s: float = 10.0  # no new instance for this long
    forced_limit_s: float = 900.0  # or this long since the first instance, whatever still arrives


def is_complete(manifest: StudyManifest, now: float, policy: CompletenessPolicy) -> bool:
    """A study is complete after a quiet period, or at the forced limit.

    The forced limit bounds how long a study that keeps trickling in (a PACS
    re-sending slowly, a modality streaming) waits before it is processed.
    """
    if manifest.instance_count == 0:
        return False
    if now - manifest.last_received >= policy.quiet_period_s:
        return True
    return now - manifest.first_received >= policy.forced_limit_s


def completion_reason(manifest: StudyManifest, now: float, policy: CompletenessPolicy) -> str:
    """Why ``is_complete`` said yes (for the job record)."""
    if now - manifest.last_received >= policy.quiet_period_s:
        return f"quiet for {policy.quiet_period_s:g} s"
    return f"forced after {policy.forced_limit_s:g} s"
