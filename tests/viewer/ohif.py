"""Run the OHIF driver (ohif_driver.mjs) on one study and read what OHIF showed.

Plain helpers with no pytest dependency, used by the test and by ``python -m tests.viewer.ohif_shot``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.viewer.serve import ohif_dist, viewer_cache

logger = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path(__file__).with_name("ohif_driver.mjs")
REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "ohif"


def playwright_dir() -> Path:
    """Where ensure-viewer.sh ran ``npm ci`` of tests/viewer/package-lock.json."""
    return viewer_cache() / "node"


def missing_viewer_parts() -> list[str]:
    """What deploy/ensure-viewer.sh (make viewer) still has to install; empty when all is there."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if shutil.which("node") is None:
        missing.append("node (apt-get install nodejs)")
    if not (ohif_dist() / "index.html").is_file():
        missing.append(f"OHIF viewer at {ohif_dist()}")
    if not (playwright_dir() / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append(f"playwright-core in {playwright_dir()}")
    return missing


@dataclass(frozen=True)
class SegTarget:
    """An image (frame) to show with a SEG loaded, and points on it in image pixels (col, row)."""

    sop_instance_uid: str
    frame: int  # 1-based frame of a multi-frame image; 1 for a single-frame one
    points: list[tuple[float, float]] = field(default_factory=list)

    def spec(self) -> dict[str, Any]:
        return {"sopInstanceUid": self.sop_instance_uid, "frame": self.frame, "points": [list(p) for p in self.points]}


def run_ohif(viewer_url: str, study_uid: str, out_dir: Path, seg_targets: list[SegTarget] | None = None,
             timeout_s: float = 300.0, step_timeout_s: float = 60.0) -> dict[str, Any]:
    """Open `study_uid` in OHIF at `viewer_url`, open each of its series; return the driver's result.

    The result (also OUT/result.json) has ``displaySets`` (what OHIF lists), ``opened`` (one entry
    per series opened: ``ok``, ``error``, ``screenshot``; for an SR ``measurements``,
    ``panelRows``, ``notCompatible``; for a SEG ``segmentation`` and ``targets``), ``blocked``
    (requests aborted because not to 127.0.0.1) and ``errors`` (the page's errors).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result_path = out_dir / "result.json"
    result_path.unlink(missing_ok=True)
    spec = {
        "viewerUrl": viewer_url,
        "studyUid": study_uid,
        "outDir": str(out_dir.resolve()),
        "playwrightDir": str(playwright_dir()),
        "timeoutMs": int(step_timeout_s * 1000),
        "segTargets": [t.spec() for t in seg_targets or []],
    }
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1", "PLAYWRIGHT_BROWSERS_PATH": "0"}
    proc = subprocess.run(["node", str(DRIVER), str(spec_path)], capture_output=True, text=True,
                          timeout=timeout_s, env=env, stdin=subprocess.DEVNULL, check=False)
    (out_dir / "driver.log").write_text(proc.stdout + proc.stderr)
    if not result_path.is_file():
        raise RuntimeError(f"OHIF driver wrote no result (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    result: dict[str, Any] = json.loads(result_path.read_text())
    result["driverLog"] = (proc.stdout + proc.stderr)[-4000:]
    return result


# --------------------------------------------------------------------------
# reading the result
# --------------------------------------------------------------------------


def opened(result: dict[str, Any], modality: str) -> list[dict[str, Any]]:
    """The driver's entries for the series of one modality it opened."""
    return [o for o in result.get("opened", []) if o.get("Modality") == modality]


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """What OHIF showed, short enough to print: per series, what opening it did."""
    series = []
    for entry in result.get("opened", []):
        item: dict[str, Any] = {k: entry.get(k) for k in ("Modality", "SeriesDescription", "ok", "error", "screenshot")
                                if entry.get(k) is not None}
        if entry.get("Modality") == "SR":
            item["not_compatible"] = entry.get("notCompatible")
            item["panel_rows"] = entry.get("panelRows")
            item["measurements"] = [
                {k: m.get(k) for k in ("label", "toolName", "referencedSOPInstanceUID", "displayText")}
                for m in entry.get("measurements", [])
            ]
        if entry.get("Modality") == "SEG":
            item["segments"] = [
                [g.get("label") for g in s.get("segments", [])] for s in entry.get("segmentation", {}).get("segmentations", [])
            ]
            item["targets"] = [
                {"sop_instance_uid": t.get("sopInstanceUid"), "frame": t.get("frame"), "error": t.get("error"),
                 "labelmap_pixels": [lm.get("count") for lm in t.get("labelmaps", [])],
                 "labelmap_centroid_col_row": [lm.get("centroid") for lm in t.get("labelmaps", [])],
                 "screenshot": t.get("screenshot")}
                for t in entry.get("targets", [])
            ]
        series.append(item)
    return {"study_uid": result.get("studyUid"), "series": series, "blocked_requests": result.get("blocked", []),
            "page_errors": result.get("errors", [])[:20], "fatal": result.get("fatal"),
            "elapsed_s": round(result.get("elapsedMs", 0) / 1000, 1)}


def labelmap_mask(labelmap: dict[str, Any]) -> np.ndarray:
    """The labelmap OHIF holds for the shown image, as a boolean (rows, columns) mask."""
    mask = np.zeros(int(labelmap["rows"]) * int(labelmap["columns"]), bool)
    mask[np.asarray(labelmap["nonzero"], dtype=np.int64)] = True
    return mask.reshape(int(labelmap["rows"]), int(labelmap["columns"]))


def overlay_pixels(screenshot: Path, box: tuple[float, float, float, float]) -> np.ndarray:
    """Which screenshot pixels inside `box` (left, top, width, height) are coloured (an overlay).

    The sources are grey-scale images, so a pixel whose channels differ by more than 40 of 255
    is the SEG overlay's colour drawn over them.
    """
    rgb = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    left, top, width, height = (int(round(v)) for v in box)
    crop = rgb[max(top, 0): top + height, max(left, 0): left + width]
    result: np.ndarray = (crop.max(axis=2) - crop.min(axis=2)) > 40
    return result


def disk_overlay_fractions(screenshot: Path, centre: tuple[float, float], inner_radius: float,
                           ring_from: float, ring_to: float) -> tuple[float, float]:
    """Coloured share of the screenshot in the disk of `inner_radius` around `centre`, and in the
    ring from `ring_from` to `ring_to` (all in screenshot pixels)."""
    left, top = centre[0] - ring_to, centre[1] - ring_to
    coloured = overlay_pixels(screenshot, (left, top, 2 * ring_to, 2 * ring_to))
    rows, cols = np.mgrid[0: coloured.shape[0], 0: coloured.shape[1]]
    dist = np.hypot(cols + max(int(round(left)), 0) - centre[0], rows + max(int(round(top)), 0) - centre[1])
    inner = dist <= inner_radius
    ring = (dist >= ring_from) & (dist <= ring_to)
    if not inner.any() or not ring.any():
        raise ValueError(f"disk of {inner_radius:.1f} px or ring {ring_from:.1f}-{ring_to:.1f} px empty on screen")
    return float(coloured[inner].mean()), float(coloured[ring].mean())
