"""The model card: a typed ``configs/metadata.json`` of a MONAI-layout bundle.

A bundle directory holds::

    configs/metadata.json   the card (this schema; extra MONAI keys are kept)
    models/<weights>        weights files, each listed with its sha256
    docs/README.md          human-readable documentation
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Label(BaseModel):
    """One output class and its coded concept (for SR encoding)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1, pattern=r"^[a-z0-9_]+$")
    code_value: str = Field(min_length=1)
    coding_scheme: str = Field(min_length=1)
    code_meaning: str = Field(min_length=1)


class InputSpec(BaseModel):
    """What the network takes; ``size`` drives preprocessing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=32, le=1024, description="square input side in pixels")
    channels: int = Field(ge=1, le=4)
    normalisation: str = Field(min_length=1)


class WeightsFile(BaseModel):
    """A weights file, relative to the bundle root, and its sha256 (lower-case hex)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    sha256: str

    @field_validator("path")
    @classmethod
    def _relative_inside(cls, value: str) -> str:
        p = PurePosixPath(value)
        if not value or p.is_absolute() or ".." in p.parts:
            raise ValueError(f"must be a relative path inside the bundle, got {value!r}")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.lower()
        if not _SHA256.match(value):
            raise ValueError("must be 64 hexadecimal digits")
        return value


class ModelCard(BaseModel):
    """Model card of one bundle (name, version, intended use, inputs, output codes, weights)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[a-z0-9_]+$")
    version: str = Field(min_length=1)
    title: str = Field(min_length=1)
    demo: bool
    intended_use: str = Field(min_length=1)
    population: str = Field(min_length=1)
    modality: str = Field(min_length=1)
    network: str = Field(default="scinti_resnet34", min_length=1)
    input: InputSpec
    labels: list[Label] = Field(min_length=2)
    decision_thresholds: dict[str, float]
    weights: list[WeightsFile] = Field(min_length=1)
    training_data: str = Field(min_length=1)
    reported_performance: dict[str, Any]

    @model_validator(mode="after")
    def _consistent(self) -> "ModelCard":
        keys = [label.key for label in self.labels]
        if len(set(keys)) != len(keys):
            raise ValueError(f"labels: duplicate keys in {keys}")
        unknown = sorted(set(self.decision_thresholds) - set(keys))
        if unknown:
            raise ValueError(f"decision_thresholds: keys {unknown} are not label keys {keys}")
        bad = {k: v for k, v in self.decision_thresholds.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"decision_thresholds: values must lie in [0, 1], got {bad}")
        return self

    @property
    def label_keys(self) -> list[str]:
        """Label keys in output order."""
        return [label.key for label in self.labels]

    @property
    def ident(self) -> str:
        """``name version``, the prefix of every message about this bundle."""
        return f"{self.name} {self.version}"
