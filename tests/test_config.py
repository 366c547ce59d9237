"""Config validation: unknown keys and bad values are rejected naming the key."""

from __future__ import annotations

import pytest

from fedp2eft.config import load_config, parse_override
from fedp2eft.errors import UserError


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_quickstart_config_is_valid():
    cfg = load_config("configs/quickstart.toml")
    assert cfg.model.name == "e5-small" and cfg.personalise.methods == ["none", "lora"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("[data]\nlangauges = ['hau']\n", r"unknown config key data\.langauges"),
        ("[dta]\nx = 1\n", r"unknown config section \[dta\]"),
        ("[data]\nclients_per_language = 'ten'\n", r"data\.clients_per_language: expected an integer"),
        ("[data]\nclients_per_language = 0\n", r"data\.clients_per_language: must be >= 1"),
        ("[personalise]\nbudgets = [2, 0]\n", r"personalise\.budgets\[1\]: a rank budget must be >= 1"),
        ("[personalise]\npools = ['seen', 'held-out']\n", r"personalise\.pools\[1\]: unknown pool"),
        ("[personalise]\nmethods = ['lora', 'magic']\n", r"personalise\.methods\[1\]: unknown method 'magic'"),
        ("[personalise]\nlr = nan\n", r"personalise\.lr: NaN"),
        ("[personalise]\nlr = -1.0\n", r"personalise\.lr: must be > 0"),
        ("[data]\ndirichlet_alpha = true\n", r"data\.dirichlet_alpha: expected a number"),
        ("[model]\npooling = 'max'\n", r"model\.pooling"),
        ("[data\n", r"invalid TOML"),
    ],
)
def test_bad_configs(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        load_config(write(tmp_path, text))


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "[data]\nlanguages=['hau']\n"),
                      ["data.languages=['yor','amh']", "personalise.lr=0.5", "model.name=tiny-bert"])
    assert cfg.data.languages == ["yor", "amh"] and cfg.personalise.lr == 0.5 and cfg.model.name == "tiny-bert"
    assert parse_override("experiment.name=hello world") == (["experiment", "name"], "hello world")
    with pytest.raises(UserError, match="section.key"):
        load_config(None, ["lr=1"])
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
