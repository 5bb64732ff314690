"""The viewer test's own parts, without a browser: the one-origin server and the screenshot analysis."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.viewer.ohif import disk_overlay_fractions, labelmap_mask, overlay_pixels
from tests.viewer.serve import ViewerServer, unescape_commas


class _Upstream(BaseHTTPRequestHandler):
    """A stand-in for Orthanc: answers every GET with the path it was asked for."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        _Upstream.seen.append(self.path)
        if self.path.startswith("/dicom-web/missing"):
            self.send_error(404)
            return
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Upstream.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    (tmp_path / "index.html").write_text("<html>viewer</html>")
    (tmp_path / "app.bundle.js").write_text("console.log(1)")
    (tmp_path / "x.wasm").write_bytes(b"\0asm")
    return tmp_path


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_unescape_commas() -> None:
    assert unescape_commas("includefield=00081030%2C00080060&limit=1") == "includefield=00081030,00080060&limit=1"
    assert unescape_commas("a=%2c") == "a=,"
    assert unescape_commas("a=%252C") == "a=%252C"  # an escaped percent sign stays as it is


def test_one_origin(upstream: str, dist: Path, tmp_path: Path) -> None:
    with ViewerServer(upstream, dist=dist) as viewer:
        # DICOMweb goes to Orthanc, with literal commas in includefield
        status, ctype, body = _get(viewer.url + "/dicom-web/studies?includefield=00081030%2C00080060")
        assert (status, ctype) == (200, "application/dicom+json")
        assert body == b"/dicom-web/studies?includefield=00081030,00080060"
        assert _get(viewer.url + "/wado?requestType=WADO")[2] == b"/wado?requestType=WADO"
        assert _get(viewer.url + "/dicom-web/missing")[0] == 404  # Orthanc's errors pass through
        # our config: DICOMweb on this origin only
        status, ctype, body = _get(viewer.url + "/app-config.js")
        assert status == 200 and "javascript" in ctype
        assert b"qidoRoot: '/dicom-web'" in body and b"http" not in body.split(b"dataSources")[1]
        # the viewer's files, and its own routes fall back to index.html
        assert _get(viewer.url + "/app.bundle.js")[2] == b"console.log(1)"
        assert _get(viewer.url + "/x.wasm")[1] == "application/wasm"
        assert _get(viewer.url + "/viewer?StudyInstanceUIDs=1.2.3")[2] == b"<html>viewer</html>"
        # nothing outside dist/ is served
        (tmp_path.parent / "secret.txt").write_text("secret")
        assert _get(viewer.url + "/../secret.txt")[2] == b"<html>viewer</html>"
        assert _get(viewer.url + "/%2e%2e/secret.txt")[2] == b"<html>viewer</html>"
    assert _Upstream.seen == ["/dicom-web/studies?includefield=00081030,00080060", "/wado?requestType=WADO",
                              "/dicom-web/missing"]


def _screenshot(path: Path, disk_centre: tuple[int, int] | None, radius: int) -> Path:
    """A grey gradient (a stand-in for a CT), with a half-transparent red disk where given."""
    rows, cols = np.mgrid[0:200, 0:300]
    grey = (cols * 255 // 300).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1).astype(np.float64)
    if disk_centre is not None:
        inside = np.hypot(cols - disk_centre[0], rows - disk_centre[1]) <= radius
        rgb[inside] = 0.5 * rgb[inside] + 0.5 * np.array([221.0, 84.0, 84.0])
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def test_overlay_found_where_drawn_and_only_there(tmp_path: Path) -> None:
    drawn = _screenshot(tmp_path / "drawn.png", (150, 100), 20)
    inner, ring = disk_overlay_fractions(drawn, (150, 100), 10, 29, 49)
    assert inner == 1.0 and ring == 0.0
    # the overlay 35 px off the lesion: its core is bare, its surroundings coloured
    inner, ring = disk_overlay_fractions(drawn, (115, 100), 10, 29, 49)
    assert inner == 0.0 and ring > 0.15
    # no overlay at all: grey pixels are never counted, whatever their brightness
    bare = _screenshot(tmp_path / "bare.png", None, 0)
    assert not overlay_pixels(bare, (0, 0, 300, 200)).any()
    assert disk_overlay_fractions(bare, (150, 100), 10, 29, 49) == (0.0, 0.0)


def test_labelmap_mask() -> None:
    mask = labelmap_mask({"rows": 3, "columns": 4, "nonzero": [1, 6, 11]})
    assert mask.tolist() == [[False, True, False, False], [False, False, True, False], [False, False, False, True]]
