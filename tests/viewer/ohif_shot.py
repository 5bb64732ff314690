"""What OHIF shows for a study: ``python -m tests.viewer.ohif_shot`` (see tests/viewer/README.md).

    python -m tests.viewer.ohif_shot --orthanc-url http://127.0.0.1:8042 --study-uid UID [--out DIR]
    python -m tests.viewer.ohif_shot --files FILE_OR_DIR ... [--study-uid UID] [--out DIR]

With ``--files`` a temporary Orthanc (free ports, stopped at the end) receives the files, and every
study among them is shown (or only ``--study-uid``). Prints a JSON summary per study (also written
to OUT/<study>/summary.json, with OHIF's full result in result.json and the screenshots beside it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from pydicom import dcmread

from tests.peers import Orthanc
from tests.viewer.ohif import ARTIFACTS, missing_viewer_parts, run_ohif, summary
from tests.viewer.serve import ViewerServer


def _dicom_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def _show(orthanc_url: str, study_uids: list[str], out: Path, timeout_s: float) -> list[dict[str, object]]:
    summaries = []
    with ViewerServer(orthanc_url) as viewer:
        for uid in study_uids:
            study_out = out / uid if len(study_uids) > 1 else out
            result = run_ohif(viewer.url, uid, study_out, timeout_s=timeout_s)
            short = summary(result)
            (study_out / "summary.json").write_text(json.dumps(short, indent=2))
            summaries.append(short)
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.viewer.ohif_shot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orthanc-url", help="an Orthanc with DICOMweb at /dicom-web (http://127.0.0.1:PORT)")
    parser.add_argument("--study-uid", action="append", default=[], help="StudyInstanceUID (repeatable)")
    parser.add_argument("--files", nargs="+", type=Path, help="DICOM files or folders for a temporary Orthanc")
    parser.add_argument("--out", type=Path, default=None, help=f"screenshots and JSON (default {ARTIFACTS}/shot)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for OHIF per study (default 300)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    missing = missing_viewer_parts()
    if missing:
        print("missing: " + "; ".join(missing) + " (run deploy/ensure-viewer.sh)", file=sys.stderr)
        return 2
    out = (args.out or ARTIFACTS / "shot").resolve()
    if args.files:
        files = _dicom_files(args.files)
        studies = sorted({str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files})
        uids = args.study_uid or studies
        with tempfile.TemporaryDirectory(prefix="ohif-shot-") as tmp, Orthanc(Path(tmp) / "orthanc") as orthanc:
            for f in files:
                orthanc.upload(f)
            summaries = _show(orthanc.url, uids, out, args.timeout)
    elif args.orthanc_url and args.study_uid:
        summaries = _show(args.orthanc_url, args.study_uid, out, args.timeout)
    else:
        parser.error("give --orthanc-url with --study-uid, or --files")
    print(json.dumps(summaries if len(summaries) > 1 else summaries[0], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
