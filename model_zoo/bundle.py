"""Load and verify a model bundle (card + weights checksums)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from model_zoo.card import ModelCard
from model_zoo.errors import BundleError

logger = logging.getLogger(__name__)

CARD_PATH = Path("configs") / "metadata.json"
DOCS_PATH = Path("docs") / "README.md"


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory and its card."""

    path: Path
    card: ModelCard

    def weights_path(self, index: int = 0) -> Path:
        """Absolute path of the card's ``index``-th weights file."""
        return self.path / self.card.weights[index].path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "card"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def read_card(path: Path) -> ModelCard:
    """Parse and validate ``<bundle>/configs/metadata.json``.

    Raises
    ------
    BundleError
        Missing or unreadable file, invalid JSON, or a card field that fails validation
        (the message names the field).
    """
    card_file = Path(path) / CARD_PATH
    try:
        raw = json.loads(card_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"bundle {path}: {CARD_PATH} not found") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle {path}: {CARD_PATH} unreadable: {exc}") from exc
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        name = raw.get("name", "?") if isinstance(raw, dict) else "?"
        version = raw.get("version", "?") if isinstance(raw, dict) else "?"
        raise BundleError(f"{name} {version}: invalid model card {CARD_PATH}: {_describe(exc)}") from exc


def load_bundle(path: Path | str) -> Bundle:
    """Load a bundle directory, validating its card, docs and every weights checksum.

    Parameters
    ----------
    path : pathlib.Path or str
        Bundle root (MONAI layout).

    Returns
    -------
    Bundle

    Raises
    ------
    BundleError
        With a message such as ``"nm_thyroid_dx 0.1.0-demo: models/model.pt sha256 mismatch:
        expected …, got …"``.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle {root}: not a directory")
    card = read_card(root)
    if not (root / DOCS_PATH).is_file():
        raise BundleError(f"{card.ident}: {DOCS_PATH} missing")
    for weights in card.weights:
        file = root / weights.path
        if not file.is_file():
            raise BundleError(f"{card.ident}: {weights.path} missing")
        actual = sha256_file(file)
        if actual != weights.sha256:
            raise BundleError(
                f"{card.ident}: {weights.path} sha256 mismatch: expected {weights.sha256}, got {actual}"
            )
    logger.info("loaded bundle %s from %s", card.ident, root)
    return Bundle(path=root, card=card)
