"""The radiologist's view: phantom NM, CT and US studies through the node, then opened in OHIF v3.

dcmtk storescu -> node -> Redis -> Celery worker -> Orthanc, then OHIF Viewer 3.13.2 (Debian's
chromium, headless, through playwright-core) on Orthanc's DICOMweb. For each study, in OHIF:

- the SEG opens as an overlay (OHIF asks, we say "Yes") on the right image and pixels: on each
  lesion's own slice (image) the labelmap OHIF holds matches the phantom's lesion (Dice), and the
  screenshot is coloured over the lesion and not around it; a CT slice away from every lesion has
  no overlay;
- the SR's measurements load (OHIF does not call the SR "not compatible", the "continue tracking"
  prompt loads them) and the Measurements panel lists one per lesion, on the lesion's image;
- every heatmap SC series opens and renders (coloured pixels in the viewport).

Every check of a study runs and all failures are reported together. Screenshots, OHIF's full
result (result.json) and a summary (summary.json) stay in test-artifacts/ohif/<modality>/.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread

from model_zoo.phantoms.ct import PhantomNodule
from model_zoo.phantoms.ct_dicom import write_ct_study
from model_zoo.phantoms.nm import write_nm_study
from model_zoo.phantoms.us import us_phantom
from model_zoo.phantoms.us_dicom import write_us_study
from tests.integration.conftest import NodeProcess
from tests.peers import Orthanc, storescu, wait_until
from tests.viewer.ohif import (ARTIFACTS, SegTarget, disk_overlay_fractions, labelmap_mask, opened,
                               overlay_pixels, run_ohif, summary)
from tests.viewer.serve import ViewerServer

pytestmark = pytest.mark.integration

SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MIN_DICE = 0.6  # OHIF's labelmap on the lesion's image vs the phantom's lesion (the model's own error included)
MIN_INNER_COLOURED = 0.5  # screenshot: coloured share of the lesion's core
MAX_RING_COLOURED = 0.15  # screenshot: coloured share of a ring around the lesion
MIN_SC_COLOURED = 0.01  # screenshot: a heatmap SC renders in colour...
MIN_SC_LIT = 0.10  # ...and is not a black viewport

# CT lesions (LPS mm, phantom lungs either side of x = 0), as in the CT end-to-end test
CT_NODULES = (
    PhantomNodule(centre_mm=(-45.0, 5.0, 12.0), diameter_mm=12.0, refractory=True, side="right"),
    PhantomNodule(centre_mm=(42.0, 15.0, 22.0), diameter_mm=16.0, refractory=True, side="left"),
)


@dataclass(frozen=True)
class Lesion:
    """A phantom lesion on one image: truth mask on that image (frame) and where it spans."""

    sop_instance_uid: str
    frame: int
    mask: np.ndarray  # bool (rows, cols) on the source image
    on_images: frozenset[str]  # SOP Instance UIDs of every image the lesion is on
    size_mm: float | None = None  # a size OHIF must show for it (US: the long axis), None: not checked

    def target(self) -> SegTarget:
        rows, cols = np.nonzero(self.mask)
        centre = (float(cols.mean()), float(rows.mean()))
        reach = float(np.hypot(cols - centre[0], rows - centre[1]).max())
        # centre, then a point `reach` image pixels to its right: the screen scale
        return SegTarget(self.sop_instance_uid, self.frame, [centre, (centre[0] + reach, centre[1])])


@dataclass(frozen=True)
class Study:
    modality: str
    study_uid: str
    paths: list[Path]
    lesions: list[Lesion]  # lesions the SEG must show and the SR must measure
    empty_images: list[str]  # images (SOP UIDs) where the SEG must show nothing
    with_seg: bool


# --------------------------------------------------------------------------
# phantom studies and their truth
# --------------------------------------------------------------------------


def _ct_study(out: Path) -> Study:
    study = write_ct_study(out, 7201, rows=256, slices=80, pixel_mm=0.8, slice_mm=1.25, nodules=CT_NODULES)
    slices = [dcmread(p, stop_before_pixels=True) for p in study.paths]
    slices = [ds for ds in slices if ds.SeriesInstanceUID == study.series_instance_uid]
    geometry = []  # (SOP UID, pixel centres in LPS mm, origin, slice normal)
    for ds in slices:
        row_dir, col_dir = np.asarray(ds.ImageOrientationPatient[:3], float), np.asarray(ds.ImageOrientationPatient[3:], float)
        origin = np.asarray(ds.ImagePositionPatient, float)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        r, c = np.mgrid[0: int(ds.Rows), 0: int(ds.Columns)]
        points = origin + c[..., None] * col_mm * row_dir + r[..., None] * row_mm * col_dir
        geometry.append((str(ds.SOPInstanceUID), points, origin, np.cross(row_dir, col_dir)))
    lesions = []
    for nodule in study.nodules:
        centre = np.asarray(nodule.centre_mm)
        radius = nodule.diameter_mm / 2
        distance = [abs(float(np.dot(centre - origin, normal))) for _, _, origin, normal in geometry]
        on = frozenset(g[0] for g, d in zip(geometry, distance) if d < radius)
        uid, points, _, _ = geometry[int(np.argmin(distance))]
        mask = np.linalg.norm(points - centre, axis=-1) <= radius  # voxel centre inside the sphere
        lesions.append(Lesion(uid, 1, mask, on))
    # a slice at least 10 mm from every lesion's surface
    far = [uid for uid, points, _, _ in geometry
           if all(np.linalg.norm(points - np.asarray(n.centre_mm), axis=-1).min() > n.diameter_mm / 2 + 10 for n in study.nodules)]
    return Study("CT", study.study_instance_uid, list(study.paths), lesions, far[len(far) // 2: len(far) // 2 + 1], True)


def _us_study(out: Path) -> Study:
    study = write_us_study(out, 8201, phantoms=[us_phantom(8201, malignant=False, diameter_mm=16.0)])
    lesions = []
    for inst in study.instances:
        frame = dcmread(inst.path, stop_before_pixels=True)
        for nodule in inst.phantom.nodules:
            full = np.zeros((int(frame.Rows), int(frame.Columns)), bool)
            r0, c0 = inst.region[0], inst.region[1]
            full[r0: r0 + nodule.mask.shape[0], c0: c0 + nodule.mask.shape[1]] = nodule.mask
            long_axis_mm = nodule.long_axis_px * inst.spacing_mm[0] if inst.spacing_mm else None
            lesions.append(Lesion(inst.sop_instance_uid, inst.middle_frame or 1, full, frozenset({inst.sop_instance_uid}),
                                  long_axis_mm))
    return Study("US", study.study_instance_uid, [i.path for i in study.instances], lesions, [], True)


def _nm_study(out: Path) -> Study:
    path = write_nm_study(out, "thyroid_tumour", seed=9301)
    ds = dcmread(path, stop_before_pixels=True)
    # no SEG for NM: the SR's finding is on the image, measured there
    lesion = Lesion(str(ds.SOPInstanceUID), 1, np.zeros((1, 1), bool), frozenset({str(ds.SOPInstanceUID)}))
    return Study("NM", str(ds.StudyInstanceUID), [path], [lesion], [], False)


STUDIES: dict[str, Callable[[Path], Study]] = {"nm": _nm_study, "ct": _ct_study, "us": _us_study}
# the demo bundles each study needs (built once into the cache if missing; `-k nm` builds no CT model)
BUNDLES = {"nm": ("nm_thyroid_dx",), "ct": ("ct_lung_met_rai",), "us": ("us_nodule_seg", "us_calcified_nodule", "us_lvlnm")}


# --------------------------------------------------------------------------
# the node's results in Orthanc
# --------------------------------------------------------------------------


def _results(orthanc: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
    out: dict[str, list[Dataset]] = {"SR": [], "SEG": [], "SC": []}
    for inst in orthanc.study_instances(study_uid):
        sop_class = orthanc.instance_metadata(inst["ID"]).get("SopClassUid", "")
        kind = "SR" if sop_class.startswith(SR_PREFIX) else {SEG_CLASS: "SEG", SC_CLASS: "SC"}.get(sop_class)
        if kind:
            out[kind].append(dcmread(io.BytesIO(orthanc.get_instance_file(inst["ID"])), stop_before_pixels=True))
    return out


def _wait_results(orthanc: Orthanc, node: NodeProcess, study: Study, timeout: float = 600) -> dict[str, list[Dataset]]:
    def ready() -> dict[str, list[Dataset]] | None:
        node.alive()
        res = _results(orthanc, study.study_uid)
        if not res["SR"] or (study.with_seg and not res["SEG"]):
            return None
        return res if len(res["SC"]) >= len(study.lesions) else None  # a heatmap per lesion (per image for NM)

    try:
        found = wait_until(ready, timeout=timeout, interval=2.0, what=f"{study.modality} results in Orthanc")
    except TimeoutError:
        pytest.fail(f"no {study.modality} results in Orthanc in {timeout} s\n{node.logs()}")
    assert found is not None
    return found


# --------------------------------------------------------------------------
# what OHIF showed vs the truth
# --------------------------------------------------------------------------


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _seg_problems(result: dict[str, Any], study: Study, n_targets: int, figures: list[dict[str, Any]]) -> list[str]:
    """What is wrong with the SEG as OHIF showed it; the measured figures are appended to `figures`."""
    problems = []
    entries = opened(result, "SEG")
    if not entries:
        return ["OHIF lists no SEG series"]
    for entry in entries:
        if not entry.get("ok"):
            page_errors = "; ".join(e.split("\n")[0] for e in result.get("errors", [])[:3])
            problems.append(f"SEG did not open: {entry.get('error')} (page errors: {page_errors or 'none'})")
            continue
        segments = [g for s in entry["segmentation"]["segmentations"] for g in s["segments"]]
        if len(segments) < len(study.lesions):
            problems.append(f"OHIF loaded {len(segments)} segment(s) for {len(study.lesions)} lesion(s)")
        targets = entry.get("targets", [])
        if len(targets) != n_targets:
            problems.append(f"{len(targets)} of {n_targets} images shown with the SEG")
            continue
        for lesion, target in zip(study.lesions, targets):
            where = f"lesion on {lesion.sop_instance_uid} frame {lesion.frame}"
            if target.get("error") or not target.get("labelmaps"):
                problems.append(f"{where}: {target.get('error', 'no labelmap on that image')}")
                continue
            masks = [labelmap_mask(lm) for lm in target["labelmaps"] if lm.get("found")]
            shown = np.any(masks, axis=0) if masks else np.zeros_like(lesion.mask)
            if shown.shape != lesion.mask.shape:
                problems.append(f"{where}: OHIF's labelmap is {shown.shape}, the image {lesion.mask.shape}")
                continue
            # Dice near the lesion (another lesion elsewhere on the slice is not this one's business)
            rows, cols = np.nonzero(lesion.mask)
            pad = int(max(np.ptp(rows), np.ptp(cols)))
            window = (slice(max(rows.min() - pad, 0), rows.max() + pad + 1), slice(max(cols.min() - pad, 0), cols.max() + pad + 1))
            dice = _dice(shown[window], lesion.mask[window])
            if dice < MIN_DICE:
                problems.append(f"{where}: OHIF's labelmap Dice {dice:.2f} with the phantom lesion (< {MIN_DICE})")
            (cx, cy), (ex, _) = target["canvasPoints"]
            reach = float(np.hypot(cols - cols.mean(), rows - rows.mean()).max())
            scale = abs(ex - cx) / reach  # screen pixels per image pixel
            radius_eq = float(np.sqrt(lesion.mask.sum() / np.pi)) * scale
            inner, ring = disk_overlay_fractions(Path(target["screenshot"]), (cx, cy), 0.5 * radius_eq,
                                                 1.3 * reach * scale + 3, 1.3 * reach * scale + 3 + radius_eq)
            figures.append({"lesion_on": lesion.sop_instance_uid, "labelmap_dice": round(dice, 3),
                            "screenshot_core_coloured": round(inner, 3), "screenshot_ring_coloured": round(ring, 3)})
            if inner < MIN_INNER_COLOURED or ring > MAX_RING_COLOURED:
                problems.append(f"{where}: screenshot coloured {inner:.0%} over the lesion's core (>= "
                                f"{MIN_INNER_COLOURED:.0%} wanted) and {ring:.0%} around it (<= {MAX_RING_COLOURED:.0%})")
        for uid, target in zip(study.empty_images, targets[len(study.lesions):]):
            count = sum(int(lm.get("count", 0)) for lm in target.get("labelmaps", []))
            if target.get("error") or count:
                problems.append(f"image {uid} away from every lesion: {target.get('error') or f'{count} overlay pixels'}")
    return problems


def _lengths_mm(display_text: Any) -> list[float]:
    """The lengths in OHIF's display text of a measurement ("L: 1.60 cm", "12.3 mm"), in mm."""
    text = json.dumps(display_text, ensure_ascii=False)
    return [float(v) * (10.0 if unit == "cm" else 1.0) for v, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(mm|cm)\b(?![²2])", text)]


def _sr_problems(result: dict[str, Any], study: Study) -> list[str]:
    problems = []
    entries = opened(result, "SR")
    if not entries:
        return ["OHIF lists no SR series"]
    for entry in entries:
        name = entry.get("SeriesDescription")
        if not entry.get("ok"):
            problems.append(f"SR {name!r} did not open: {entry.get('error')}")
            continue
        if entry.get("notCompatible"):
            problems.append(f"SR {name!r}: OHIF says {entry.get('badgeTooltip')!r} (not loadable)")
        measurements = entry.get("measurements", [])
        rows = entry.get("panelRows", [])
        if len(rows) < len(study.lesions):
            problems.append(f"SR {name!r}: Measurements panel lists {len(rows)} row(s) for {len(study.lesions)} "
                            f"lesion(s): {entry.get('panelText')!r}")
        for lesion in study.lesions:
            on_lesion = [m for m in measurements if m.get("referencedSOPInstanceUID") in lesion.on_images]
            if not on_lesion:
                problems.append(f"SR {name!r}: no measurement in OHIF on the image(s) of the lesion on "
                                f"{lesion.sop_instance_uid} ({len(measurements)} measurement(s) loaded)")
            elif lesion.size_mm is not None:
                shown = [v for m in on_lesion for v in _lengths_mm(m.get("displayText"))]
                if not any(abs(v - lesion.size_mm) <= 0.1 * lesion.size_mm for v in shown):
                    problems.append(f"SR {name!r}: OHIF shows lengths {shown} mm for a lesion of {lesion.size_mm:.1f} mm")
    return problems


def _sc_problems(result: dict[str, Any], sc_series: set[str]) -> list[str]:
    problems = []
    entries = [o for o in result.get("opened", []) if o.get("SeriesInstanceUID") in sc_series]
    if len(entries) < len(sc_series):
        problems.append(f"OHIF opened {len(entries)} heatmap series of the {len(sc_series)} the node sent")
    for entry in entries:
        if not entry.get("ok"):
            problems.append(f"heatmap {entry.get('SeriesDescription')!r} did not open: {entry.get('error')}")
            continue
        # the driver waited until the viewport showed the SC's own instance; it must render as the
        # colour image it is (a Grad-CAM of a confident "benign" can be grey: the whole viewport counts)
        rect = next((vp["canvasRect"] for vp in entry.get("viewports", []) if vp.get("imageId")), None)
        shot = np.asarray(Image.open(entry["screenshot"]).convert("RGB"))
        if rect is None:
            problems.append(f"heatmap {entry.get('SeriesDescription')!r}: no image in the viewport")
            continue
        left, top, width, height = (int(round(v)) for v in rect)
        lit = float((shot[top: top + height, left: left + width].max(axis=2) > 40).mean())
        coloured = float(overlay_pixels(Path(entry["screenshot"]), tuple(rect)).mean())
        if coloured < MIN_SC_COLOURED or lit < MIN_SC_LIT:
            problems.append(f"heatmap {entry.get('SeriesDescription')!r}: {coloured:.1%} coloured and {lit:.0%} "
                            f"non-black pixels in the viewport (>= {MIN_SC_COLOURED:.0%}, >= {MIN_SC_LIT:.0%} wanted)")
    return problems


@pytest.mark.parametrize("modality", sorted(STUDIES))
def test_results_in_ohif(modality: str, orthanc: Orthanc, redis_url: str, viewer: ViewerServer,
                         node_factory: Callable[..., NodeProcess], tmp_path: Path) -> None:
    from model_zoo.demo import ensure_demo_bundle

    for name in BUNDLES[modality]:
        ensure_demo_bundle(name)
    study = STUDIES[modality](tmp_path / "in")
    node = node_factory(orthanc, redis_url)
    sent = storescu(study.paths, node.port, called_aet=node.ae_title, timeout=300, verbose=False)
    assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]
    for path in study.paths:  # the PACS holds the source images too: OHIF shows results over them
        orthanc.upload(path)
    res = _wait_results(orthanc, node, study)

    artifacts = ARTIFACTS / modality
    shutil.rmtree(artifacts, ignore_errors=True)
    targets = [lesion.target() for lesion in study.lesions] if study.with_seg else []
    targets += [SegTarget(uid, 1, []) for uid in study.empty_images]
    result = run_ohif(viewer.url, study.study_uid, artifacts, targets)
    (artifacts / "summary.json").write_text(json.dumps(summary(result), indent=2))
    assert not result.get("fatal"), f"OHIF driver failed: {result['fatal']}\n{result.get('driverLog')}"

    problems = []
    listed = {ds["SeriesInstanceUID"] for ds in result["displaySets"]}
    for kind, items in res.items():
        for ds in items:
            if ds.SeriesInstanceUID not in listed:
                problems.append(f"OHIF does not list the {kind} series {ds.SeriesDescription!r}")
    figures: list[dict[str, Any]] = []
    if study.with_seg:
        problems += _seg_problems(result, study, len(targets), figures)
    problems += _sr_problems(result, study)
    problems += _sc_problems(result, {str(ds.SeriesInstanceUID) for ds in res["SC"]})
    (artifacts / "checks.json").write_text(json.dumps({"problems": problems, "seg_figures": figures}, indent=2))
    assert not problems, f"{modality.upper()} in OHIF (screenshots in {artifacts}):\n- " + "\n- ".join(problems)
