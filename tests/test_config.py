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
    assert cfg.data.languages == ["yor", "amh"] and cfg.personalise.recipe.lr == 0.5 and cfg.model.name == "tiny-bert"
    assert parse_override("experiment.name=hello world") == (["experiment", "name"], "hello world")
    with pytest.raises(UserError, match="section.key"):
        load_config(None, ["lr=1"])
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("old, new", [("personalise.adalora_lr = 1e-3", "adalora.lr"),
                                      ("personalise.adalora_alpha = 8", "adalora.alpha"),
                                      ("personalise.none_trains_head = false", "none.trains_head"),
                                      ("personalise.tune_lrs = [1e-3]", "tuned.lrs"),
                                      ("personalise.tune_fraction = 0.3", "tuned.fraction")])
def test_a_moved_key_is_a_one_line_error_naming_its_new_place(tmp_path, old, new):
    section, rest = old.split(".", 1)
    with pytest.raises(UserError, match=rf"config key {section}\.{rest.split(' ')[0]} has moved: set {new} instead"):
        load_config(write(tmp_path, f"[{section}]\n{rest}\n"))
    with pytest.raises(UserError, match=rf"set {new} instead"):
        load_config(None, [old.replace(" ", "")])
    key = new.split(".")[1]
    value = rest.split(" = ")[1]
    cfg = load_config(write(tmp_path, f"[{new.split('.')[0]}]\n{key} = {value}\n"))
    assert getattr(getattr(cfg, new.split(".")[0]), key) is not None


def test_the_recipe_is_declared_once_and_composed_into_personalise_with_flat_keys(tmp_path):
    import dataclasses

    from fedp2eft.config import from_dict, migrate
    from fedp2eft.training import Recipe

    cfg = load_config(write(tmp_path, "[personalise]\nlr = 3e-3\nhead = 'adapter'\nmethods = ['lora']\n"))
    assert cfg.personalise.recipe == Recipe(lr=3e-3, head="adapter")
    flat = cfg.to_dict()["personalise"]
    assert flat["lr"] == 3e-3 and flat["head"] == "adapter" and "recipe" not in flat  # one level, as in TOML
    assert from_dict(cfg.to_dict()) == cfg  # the results file's form reads back to the same config
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.personalise.recipe.lr = 1.0  # sections are frozen: what the code receives is what was loaded
    # a results file written before the method keys moved reads back with the values in their new places
    old = {"personalise": {"methods": ["none"], "adalora_lr": 2e-3, "none_trains_head": False, "tune_lrs": [1e-3]}}
    moved = from_dict(migrate(old))
    assert (moved.adalora.lr, moved.none.trains_head, moved.tuned.lrs) == (2e-3, False, [1e-3])
    assert "adalora_lr" in old["personalise"]  # migrate copies; the stored dict is untouched
