"""The node's one typed configuration object.

Read from a YAML file and from environment variables (``THYROID_NODE_...``,
nested fields joined with ``__``, e.g. ``THYROID_NODE_COMPLETENESS__QUIET_PERIOD_S=5``);
environment variables win over the file. Every default lives here.
Validation happens once, at start-up, and names the failing field.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash

QUEUES = ("nm", "ct", "us", "export")


def _check_ae(value: str) -> str:
    if not AE_TITLE_RE.match(value) or not value.strip():
        raise ValueError(f"not a valid AE title (1-16 printable characters, no backslash): {value!r}")
    return value.strip()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedCaller(_Strict):
    """A calling AE title that may send to the node, optionally only from one host (an IP address)."""

    ae_title: str
    host: str | None = None

    _ae = field_validator("ae_title")(_check_ae)

    @field_validator("host")
    @classmethod
    def _ip_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                return str(ipaddress.ip_address(value))
            except ValueError:
                raise ValueError(f"host must be an IP address (the peer's address is compared), not {value!r}") from None
        return value


class Completeness(_Strict):
    """When a study counts as complete: a quiet period, or a forced limit."""

    quiet_period_s: float = Field(10.0, gt=0)
    forced_limit_s: float = Field(900.0, gt=0)
    sweep_interval_s: float = Field(0.5, gt=0, le=60)

    @model_validator(mode="after")
    def _limit_after_quiet(self) -> "Completeness":
        if self.forced_limit_s < self.quiet_period_s:
            raise ValueError("forced_limit_s must be >= quiet_period_s")
        return self


ResultKind = Literal["sr", "seg", "sc"]


class Destination(_Strict):
    """A DICOM peer (usually the PACS) that receives the node's results.

    ``accepts``: which kinds of result object the destination takes (``sr``: the TID 1500
    Comprehensive 3D SR, ``seg``: Segmentation, ``sc``: Secondary Capture). ``None`` (the
    default): whatever the association negotiation accepts. A list: only those kinds are sent
    (and only if the negotiation accepts them too), e.g. ``[sc]`` for a PACS that stores SEG and
    SR but whose viewer cannot show them. Where SR or SEG is left out or refused, the node sends
    Secondary Captures in their place (outlines burned over the source images, a findings page).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    accepts: list[ResultKind] | None = Field(None, min_length=1)

    _ae = field_validator("ae_title")(_check_ae)

    @field_validator("accepts")
    @classmethod
    def _accepts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if len(set(value)) != len(value):
            raise ValueError(f"accepts: each kind once, got {value}")
        if "sc" not in value and not {"sr", "seg"} <= set(value):
            raise ValueError("accepts leaves out sr or seg, so it must list sc: their fallback is Secondary Captures")
        return value


class Match(_Strict):
    """What a series must show for a rule to take it. Empty fields match anything."""

    modality: list[str] = []
    sop_class_uid: list[str] = []
    body_part: list[str] = []
    series_description: str | None = None  # a regular expression, searched case-insensitively
    calling_ae: list[str] = []

    @field_validator("series_description")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class Rule(_Strict):
    """A routing rule: series that match go to ``pipeline`` on ``queue``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    match: Match = Match()
    pipeline: str
    queue: Literal["nm", "ct", "us"]


def _default_rules() -> list[Rule]:
    return [
        Rule(name="nm-thyroid", match=Match(modality=["NM"]), pipeline="nm_thyroid_dx", queue="nm"),
        Rule(name="ct-lung-mets", match=Match(modality=["CT"]), pipeline="ct_lung_met_rai", queue="ct"),
        Rule(name="us-thyroid", match=Match(modality=["US"]), pipeline="us_thyroid_nodule", queue="us"),
    ]


Backbone = Literal["xception", "densenet169"]


class USOptions(_Strict):
    """Options of the ultrasound pipeline (seeds 004 and 002)."""

    # seed 004's backbones to run on each nodule; more than one: their probabilities are averaged.
    # Default: Xception alone, the paper's best (external AUC 0.970).
    malignancy_backbones: list[Backbone] = Field(default_factory=lambda: list[Backbone](["xception"]), min_length=1)
    run_lvlnm: bool = True  # seed 002 (large-volume node metastasis) on each nodule
    max_images: int = Field(64, ge=1, le=10000)  # images (or cine clips) analysed per study; the rest are listed as not analysed

    @field_validator("malignancy_backbones")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"backbones must be unique, got {value}")
        return value


GravesMode = Literal["if_graves", "always", "off"]


class NMOptions(_Strict):
    """Options of the NM pipeline (seed 003, then seed 001 on Graves' disease scintigrams)."""

    # When seed 001 (nm_graves_i131: cure after a first I-131 therapy) runs on an NM image:
    # "if_graves" (default): only where seed 003's predicted class is Graves' disease;
    # "always": on every image seed 003 analysed; "off": never (its bundle is not even loaded).
    # With "if_graves", a `models` mapping that names no nm_graves_i131 bundle (a config written
    # before seed 001) runs seed 003 alone; "always" requires the bundle (checked at start-up).
    graves_i131: GravesMode = "if_graves"


class Settings(BaseSettings):
    """Everything the node, its workers and its tools are configured with."""

    model_config = SettingsConfigDict(
        env_prefix="THYROID_NODE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    ae_title: str = "THYROID_AI"
    bind_address: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    allowed_callers: list[AllowedCaller] = []  # empty: any calling AE title may send
    data_dir: Path = Path("var")
    min_free_disk_mb: int = Field(500, ge=0)
    max_pdu: int = Field(0, ge=0)  # 0: unlimited
    metrics_port: int = Field(0, ge=0, le=65535)  # Prometheus /metrics of the listener; 0: off
    completeness: Completeness = Completeness()
    broker_url: str | None = None  # None: embedded SQLite broker under data_dir
    destinations: list[Destination] = []
    routes: list[Rule] = Field(default_factory=_default_rules)
    # zoo model name -> bundle directory, or "demo" (the phantom-trained cache)
    models: dict[str, str] = {
        "nm_thyroid_dx": "demo",
        "ct_lung_met_rai": "demo",
        "us_nodule_seg": "demo",
        "us_calcified_nodule": "demo",
        "us_lvlnm": "demo",
        "nm_graves_i131": "demo",
    }
    nm: NMOptions = NMOptions()
    us: USOptions = USOptions()
    task_lease_s: float = Field(1800.0, gt=0)  # a route with no sign of its task this long is dispatched again
    export_max_retries: int = Field(40, ge=0)
    export_backoff_s: float = Field(5.0, gt=0)
    export_backoff_max_s: float = Field(300.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    _ae = field_validator("ae_title")(_check_ae)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"sqla+sqlite:///{(self.data_dir / 'broker.db').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @model_validator(mode="after")
    def _rules_name_models(self) -> "Settings":
        names = [r.name for r in self.routes]
        if len(names) != len(set(names)):
            raise ValueError("routes: rule names must be unique")
        if self.nm.graves_i131 == "always" and not self.models.get("nm_graves_i131"):
            raise ValueError("nm.graves_i131 is 'always' but models names no nm_graves_i131 bundle")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides the file, which arrives as init kwargs.
        return env_settings, init_settings


class ConfigError(Exception):
    """The configuration is invalid; the message names the failing field(s)."""


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Read the YAML file (if any), apply env vars and ``overrides``, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data.update(loaded)
        # Relative data_dir in a file is taken relative to the file.
        if "data_dir" in data and not Path(str(data["data_dir"])).is_absolute():
            data["data_dir"] = str(Path(path).resolve().parent / str(data["data_dir"]))
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from exc
