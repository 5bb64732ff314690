"""OHIF's prebuilt viewer and Orthanc's DICOMweb on one local origin, for the viewer test.

A stdlib HTTP server on 127.0.0.1 (free port): ``/app-config.js`` is ours (one DICOMweb data
source at ``/dicom-web`` on the same origin), ``/dicom-web/...`` and ``/wado...`` are proxied to
Orthanc, anything else is a file of OHIF's ``dist/`` with the single-page-app fallback to
``index.html``. Orthanc's DICOMweb plugin 1.7 ignores ``includefield=a%2Cb``: the proxy
un-escapes ``%2C`` in the query string before forwarding.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)

OHIF_VERSION = "3.13.2"
PROXIED_PREFIXES = ("/dicom-web", "/wado")
PROXY_TIMEOUT_S = 60.0
# response headers of Orthanc worth passing on (hop-by-hop ones are not)
PASSED_HEADERS = ("Content-Type", "Content-Disposition", "ETag", "Last-Modified")

APP_CONFIG = """\
/* Written by tests/viewer/serve.py: Orthanc's DICOMweb on this origin, nothing else. */
window.config = {
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 10, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (test PACS) through the local proxy',
        name: 'orthanc',
        wadoUriRoot: '/wado',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        dicomUploadEnabled: false,
        bulkDataURI: { enabled: true },
        omitQuotationForMultipartRequest: true,
      },
    },
  ],
};
"""


def viewer_cache() -> Path:
    """Where deploy/ensure-viewer.sh puts OHIF and playwright-core (outside git)."""
    env = os.environ.get("THYROID_NODE_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "thyroid-node"
    return base / "viewer"


def ohif_dist() -> Path:
    """OHIF's prebuilt static files (``npm pack @ohif/app`` untarred by ensure-viewer.sh)."""
    return viewer_cache() / f"ohif-{OHIF_VERSION}" / "dist"


def unescape_commas(query: str) -> str:
    """``includefield=a%2Cb`` -> ``includefield=a,b`` (Orthanc's DICOMweb 1.7 needs literal commas)."""
    return query.replace("%2C", ",").replace("%2c", ",")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(send_body=False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        logger.debug("viewer http: " + format, *args)

    def _answer(self, send_body: bool) -> None:
        path, _, query = self.path.partition("?")
        if path.startswith(PROXIED_PREFIXES):
            self._proxy(path, query, send_body)
        elif path == "/app-config.js":
            self._send(200, APP_CONFIG.encode(), "application/javascript", send_body)
        else:
            self._static(path, send_body)

    def _proxy(self, path: str, query: str, send_body: bool) -> None:
        target = self.server.orthanc_url + path + ("?" + unescape_commas(query) if query else "")
        request = urllib.request.Request(target, method=self.command)
        for name in ("Accept", "Range"):
            if self.headers.get(name):
                request.add_header(name, self.headers[name])
        self.server.requests.append(path)
        try:
            with urllib.request.urlopen(request, timeout=PROXY_TIMEOUT_S) as resp:
                status, body, headers = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, body, headers = exc.code, exc.read(), exc.headers
            logger.info("orthanc answered %d to %s", status, target)
        except OSError as exc:
            self._send(502, f"proxy error: {exc}".encode(), "text/plain", send_body)
            return
        self.send_response(status)
        for name in PASSED_HEADERS:
            if headers.get(name):
                self.send_header(name, headers[name])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _static(self, path: str, send_body: bool) -> None:
        root = self.server.dist
        relative = urllib.parse.unquote(path).lstrip("/")
        candidate = (root / relative).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            candidate = root / "index.html"  # the single-page app's own routes (/viewer, ...)
        content_type = "application/wasm" if candidate.suffix == ".wasm" else (
            mimetypes.guess_type(candidate.name)[0] or "application/octet-stream")
        self._send(200, candidate.read_bytes(), content_type, send_body)

    def _send(self, status: int, body: bytes, content_type: str, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dist = dist.resolve()
        self.orthanc_url = orthanc_url.rstrip("/")
        self.requests: list[str] = []


class ViewerServer:
    """OHIF + a DICOMweb proxy to `orthanc_url` on http://127.0.0.1:<free port>."""

    def __init__(self, orthanc_url: str, dist: Path | None = None) -> None:
        self.dist = dist or ohif_dist()
        if not (self.dist / "index.html").is_file():
            raise FileNotFoundError(f"no OHIF viewer at {self.dist} (deploy/ensure-viewer.sh installs it)")
        self._server = _Server(self.dist, orthanc_url)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def proxied_paths(self) -> list[str]:
        """Paths of the DICOMweb requests proxied so far (for diagnostics)."""
        return list(self._server.requests)

    def start(self) -> Self:
        self._thread.start()
        logger.info("OHIF viewer at %s (Orthanc %s)", self.url, self._server.orthanc_url)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
