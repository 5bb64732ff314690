"""The typed settings: file, environment, validation naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from config.settings import ConfigError, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.yaml"


def test_defaults_need_no_file() -> None:
    s = load_settings()
    assert s.embedded_broker and s.effective_broker_url.startswith("sqla+sqlite:///")
    assert s.completeness.quiet_period_s == 10
    assert [r.queue for r in s.routes] == ["nm", "ct", "us"]
    assert s.us.malignancy_backbones == ["xception"] and s.us.run_lvlnm


def test_example_config_is_valid() -> None:
    s = load_settings(EXAMPLE)
    assert s.destinations and s.routes


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("port: 104\ndata_dir: var\ncompleteness: {quiet_period_s: 3}\n")
    monkeypatch.setenv("THYROID_NODE_PORT", "11113")
    s = load_settings(cfg)
    assert s.port == 11113 and s.completeness.quiet_period_s == 3
    assert s.data_dir == tmp_path / "var"  # relative to the file


@pytest.mark.parametrize(
    "text, field",
    [
        ("port: 70000\n", "port"),
        ("ae_title: 'MUCH_TOO_LONG_AE_TITLE'\n", "ae_title"),
        ("destinations: [{name: pacs, ae_title: P, host: h, port: 0}]\n", "destinations.0.port"),
        ("routes: [{name: r, pipeline: p, queue: gpu}]\n", "routes.0.queue"),
        ("completeness: {quiet_period_s: 20, forced_limit_s: 5}\n", "completeness"),
        ("bogus: 1\n", "bogus"),
        ("allowed_callers: [{ae_title: PACS, host: pacs.example.org}]\n", "allowed_callers.0.host"),
        ("routes: [{name: r, pipeline: p, queue: nm, match: {series_description: '('}}]\n", "routes.0.match.series_description"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert f"  {field}" in str(err.value)


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")


def test_us_backbones_are_checked() -> None:
    assert load_settings(us={"malignancy_backbones": ["xception", "densenet169"]}).us.malignancy_backbones == [
        "xception", "densenet169"]
    for bad in ([], ["resnet"], ["xception", "xception"]):
        with pytest.raises(ConfigError, match="malignancy_backbones"):
            load_settings(us={"malignancy_backbones": bad})


def test_nm_graves_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.nm.graves_i131 == "if_graves" and s.models["nm_graves_i131"] == "demo"
    assert load_settings(EXAMPLE).nm.graves_i131 == "if_graves"
    assert load_settings(nm={"graves_i131": "always"}).nm.graves_i131 == "always"
    monkeypatch.setenv("THYROID_NODE_NM__GRAVES_I131", "off")
    assert load_settings().nm.graves_i131 == "off"
    monkeypatch.delenv("THYROID_NODE_NM__GRAVES_I131")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("nm: {graves_i131: sometimes}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "  nm.graves_i131" in str(err.value)
    # "always" needs the bundle; "if_graves" without one runs seed 003 alone
    with pytest.raises(ConfigError, match="nm_graves_i131"):
        load_settings(nm={"graves_i131": "always"}, models={"nm_thyroid_dx": "demo"})
    assert load_settings(models={"nm_thyroid_dx": "demo"}).nm.graves_i131 == "if_graves"


def test_destination_accepts(tmp_path: Path) -> None:
    """accepts: which of SR, SEG, SC a destination takes; absent: what the negotiation accepts."""
    dest = {"name": "pacs", "ae_title": "P", "host": "127.0.0.1", "port": 104}
    assert load_settings(destinations=[dest]).destinations[0].accepts is None
    assert load_settings(EXAMPLE).destinations[0].accepts is None
    assert load_settings(destinations=[{**dest, "accepts": ["sc"]}]).destinations[0].accepts == ["sc"]
    assert load_settings(destinations=[{**dest, "accepts": ["sr", "seg"]}]).destinations[0].accepts == ["sr", "seg"]
    for bad, why in (([], "at least 1"), (["sc", "sc"], "each kind once"), (["pdf"], "sr"),
                     (["sr"], "must list sc")):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump({"destinations": [{**dest, "accepts": bad}]}))
        with pytest.raises(ConfigError, match=why) as err:
            load_settings(cfg)
        assert "  destinations.0.accepts" in str(err.value)
