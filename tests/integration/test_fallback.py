"""SC fallback end to end: a destination that refuses SEG and SR gets Secondary Captures instead.

dcmtk storescu -> node -> Redis -> Celery workers -> export to two destinations: dcmtk's
``storescp`` with an association-negotiation profile that accepts only image storage classes
(Secondary Capture, US, CT, NM; no SEG, no SR), and Orthanc, which accepts everything. One
phantom thyroid ultrasound image with one nodule of known outline goes through. What reaches
storescp is checked against the phantom: no SEG or SR, the heatmap SC, one outline SC on the
source image with the outline where the phantom's nodule is, one summary page naming one
finding, all dciodvfy-clean, in the source study; Orthanc gets SR + SEG + heatmap SC only.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from pydicom import Dataset, dcmread

from model_zoo.phantoms.us import us_phantom
from model_zoo.phantoms.us_dicom import USInstanceTruth, write_us_study
from tests.integration.conftest import NodeProcess, require_tools
from tests.integration.sr_read import walk
from tests.peers import Orthanc, dciodvfy_errors, echoscu, free_port, native_tool, stop_process, storescu, wait_until
from workers.encode.sc_fallback import OUTLINE_SERIES_NUMBER, PALETTE, SUMMARY_SERIES_NUMBER, placement

pytestmark = pytest.mark.integration

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
HEATMAP_SERIES = 9902
REFUSER_AET = "OLDVIEWER"

# image storage only: Verification, Secondary Capture, US (single and multi-frame), CT, NM
PROFILE = r"""
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[[PresentationContexts]]
[ImagesOnly]
PresentationContext1 = 1.2.840.10008.1.1\Uncompressed
PresentationContext2 = 1.2.840.10008.5.1.4.1.1.7\Uncompressed
PresentationContext3 = 1.2.840.10008.5.1.4.1.1.6.1\Uncompressed
PresentationContext4 = 1.2.840.10008.5.1.4.1.1.3.1\Uncompressed
PresentationContext5 = 1.2.840.10008.5.1.4.1.1.2\Uncompressed
PresentationContext6 = 1.2.840.10008.5.1.4.1.1.20\Uncompressed

[[Profiles]]
[ImagesOnly]
PresentationContexts = ImagesOnly
"""


@pytest.fixture
def refusing_scp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp that accepts image storage only (no SEG, no SR); (port, output folder)."""
    config = tmp_path / "images-only.cfg"
    config.write_text(PROFILE)
    out = tmp_path / "refuser"
    out.mkdir()
    port = free_port()
    log = open(tmp_path / "storescp.log", "wb")
    proc = subprocess.Popen(
        [native_tool("storescp"), "-aet", REFUSER_AET, "-od", str(out), "-xf", str(config), "ImagesOnly", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: proc.poll() is None and echoscu(port, called_aet=REFUSER_AET, calling_aet="PROBE").returncode == 0,
                   timeout=30, what="storescp answering C-ECHO")
        yield port, out
    finally:
        stop_process(proc)
        log.close()


def _orthanc_objects(orthanc: Orthanc, study_uid: str) -> list[Dataset]:
    out: list[Dataset] = []
    for inst in orthanc.study_instances(study_uid):
        ds = dcmread(io.BytesIO(orthanc.get_instance_file(inst["ID"])))
        if ds.get("Manufacturer") == "Thyroid AI Node":
            out.append(ds)
    return out


def _truth_mask(inst: USInstanceTruth) -> np.ndarray:
    frame = dcmread(inst.path, stop_before_pixels=True)
    full = np.zeros((int(frame.Rows), int(frame.Columns)), bool)
    r0, c0 = inst.region[0], inst.region[1]
    mask = inst.phantom.nodules[0].mask
    full[r0 : r0 + mask.shape[0], c0 : c0 + mask.shape[1]] = mask
    return full


def _outlined_region(sc: Dataset, rows: int, cols: int) -> np.ndarray:
    """The region segment 1's outline colour encloses, on the source image's pixel grid."""
    place = placement(rows, cols, demo="DEMO" in str(sc.SeriesDescription))
    picture = sc.pixel_array[place.top : place.top + place.height, place.left : place.left + place.width]
    ring = np.all(picture == np.asarray(PALETTE[0], dtype=np.uint8), axis=-1)
    inside = ndimage.binary_fill_holes(ring) & ~ring
    return np.asarray(Image.fromarray(inside.astype(np.uint8) * 255).resize((cols, rows), Image.Resampling.NEAREST)) > 0


def _measurement_groups(sr: Dataset) -> int:
    return sum(
        1 for item in walk(sr)
        if item.get("ValueType") == "CONTAINER" and str(item.ConceptNameCodeSequence[0].CodeValue) == "125007"
    )


def test_destination_refusing_seg_and_sr_gets_secondary_captures(
    orthanc: Orthanc, redis_url: str, node_factory: Callable[..., NodeProcess],
    refusing_scp: tuple[int, Path], tmp_path: Path,
) -> None:
    require_tools()
    scp_port, received = refusing_scp
    node = node_factory(orthanc, redis_url, destinations=[
        {"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
        {"name": "viewer", "ae_title": REFUSER_AET, "host": "127.0.0.1", "port": scp_port},
    ])
    study = write_us_study(tmp_path / "us", 8301, phantoms=[us_phantom(8301, malignant=True, diameter_mm=16.0)])
    (inst,) = study.instances
    sent = storescu([inst.path], node.port, called_aet=node.ae_title, timeout=120, extra_args=["-xe"], verbose=False)
    assert sent.returncode == 0, sent.stdout[-2000:] + sent.stderr[-2000:]

    def finished() -> bool:
        node.alive()
        if node.spool_jobs("failed"):
            pytest.fail(f"the job failed: {(node.spool_jobs('failed')[0] / 'error.json').read_text()}\n{node.logs()}")
        return bool(node.spool_jobs("done"))

    try:
        wait_until(finished, timeout=420, interval=2.0, what="the job exported to both destinations")
    except TimeoutError:
        pytest.fail(f"job not done in time\n{node.logs()}")

    # --- the refusing destination: Secondary Captures only -------------------------------
    files = sorted(p for p in received.rglob("*") if p.is_file())
    got = [dcmread(p) for p in files]
    assert got, "nothing reached storescp"
    assert all(str(ds.SOPClassUID) == SC_CLASS for ds in got), sorted({str(ds.SOPClassUID) for ds in got})
    by_series: dict[int, list[Dataset]] = {}
    for ds in got:
        assert ds.StudyInstanceUID == study.study_instance_uid
        by_series.setdefault(int(ds.SeriesNumber), []).append(ds)
        errors = dciodvfy_errors(Path(str(ds.filename)))
        assert errors == [], f"dciodvfy errors in series {ds.SeriesNumber}: {errors}"
    assert sorted(by_series) == [HEATMAP_SERIES, OUTLINE_SERIES_NUMBER, SUMMARY_SERIES_NUMBER], sorted(by_series)

    # one outline SC, over the source image, the outline where the phantom's nodule is
    (outline,) = by_series[OUTLINE_SERIES_NUMBER]
    assert [str(r.ReferencedSOPInstanceUID) for r in outline.SourceImageSequence] == [inst.sop_instance_uid]
    assert "DEMO" in outline.SeriesDescription and outline.BurnedInAnnotation == "NO"
    truth = _truth_mask(inst)
    region = _outlined_region(outline, *truth.shape)
    assert region.sum() > 100, "no closed outline in segment 1's colour"
    dice = 2.0 * float((region & truth).sum()) / float(region.sum() + truth.sum())
    assert dice >= 0.75, f"outlined region vs the phantom's nodule: Dice {dice:.3f}"
    (r_out, c_out), (r_true, c_true) = (np.argwhere(m).mean(axis=0) for m in (region, truth))
    diameter = 2.0 * np.sqrt(truth.sum() / np.pi)
    assert np.hypot(r_out - r_true, c_out - c_true) <= 0.1 * diameter

    # one summary page naming the one finding, referencing the source image
    (page,) = by_series[SUMMARY_SERIES_NUMBER]
    assert "1 finding(s)" in str(page.DerivationDescription)
    assert inst.sop_instance_uid in {str(r.ReferencedSOPInstanceUID) for r in page.SourceImageSequence}

    # --- the destination that accepts everything: exactly SR + SEG + heatmap SC ----------------
    pacs = _orthanc_objects(orthanc, study.study_instance_uid)
    kinds = sorted("SR" if str(d.SOPClassUID).startswith(SR_PREFIX) else "SEG" if d.SOPClassUID == SEG_CLASS else
                   f"SC {d.SeriesNumber}" for d in pacs)
    assert kinds == ["SC 9902", "SEG", "SR"], kinds
    (sr,) = [d for d in pacs if str(d.SOPClassUID).startswith(SR_PREFIX)]
    assert _measurement_groups(sr) == 1
    (heatmap,) = by_series[HEATMAP_SERIES]
    assert heatmap.SOPInstanceUID in {d.SOPInstanceUID for d in pacs}  # the same object at both
