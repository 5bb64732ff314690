"""Managing a site's bundles: list what the config names, verify a bundle, install one.

Installing copies a verified bundle into ``<data_dir>/bundles/<name>-<version>/`` (through a
temporary folder and one rename), so the node never runs from a half-copied or tampered bundle.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from model_zoo.bundle import Bundle, load_bundle
from model_zoo.demo import demo_bundle_path
from model_zoo.errors import BundleError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleStatus:
    """One configured model: where its bundle is and whether it passes its checks."""

    name: str
    location: str
    path: Path
    bundle: Bundle | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def resolve(location: str, name: str) -> Path:
    """A configured location ("demo" or a folder) as a bundle path."""
    return demo_bundle_path(name) if location == "demo" else Path(location)


def status(models: dict[str, str]) -> list[BundleStatus]:
    """Check every bundle a config names (``models`` of the settings)."""
    out = []
    for name, location in sorted(models.items()):
        path = resolve(location, name)
        try:
            bundle = load_bundle(path)
            if bundle.card.name != name:
                raise BundleError(f"{bundle.card.ident}: configured as {name!r} but the card names {bundle.card.name!r}")
            out.append(BundleStatus(name, location, path, bundle, None))
        except BundleError as exc:
            out.append(BundleStatus(name, location, path, None, str(exc)))
    return out


def install(source: Path, bundles_dir: Path, *, force: bool = False) -> Path:
    """Verify ``source`` and copy it to ``bundles_dir/<name>-<version>``; return the new path.

    Raises
    ------
    BundleError
        The source fails its checks, or another bundle with that name and version is installed
        (``force`` replaces it).
    """
    bundle = load_bundle(source)
    target = bundles_dir / f"{bundle.card.name}-{bundle.card.version}"
    if target.exists() and not force:
        raise BundleError(f"{bundle.card.ident}: already installed at {target} (use --force to replace it)")
    bundles_dir.mkdir(parents=True, exist_ok=True)
    staging = bundles_dir / f".{target.name}.installing"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    load_bundle(staging)  # the copy is checked too
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    logger.info("installed %s at %s", bundle.card.ident, target)
    return target
