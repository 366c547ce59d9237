"""No stale state (issue 10, item 1): every stage folder records its settings; a differing one is
refused naming the keys, or retrained under --fresh, which also drops the runs it served; seeds
reach the stages."""

from __future__ import annotations

import json

import pytest

from fedp2eft.cli import main
from fedp2eft.config import load_config
from fedp2eft.errors import UserError
from fedp2eft.setup.stage_state import claim_stage, settings_diff
from fl_helpers import tiny_overrides


def test_claim_stage_records_refuses_and_wipes_under_fresh(tmp_path):
    folder = tmp_path / "stage"
    claim_stage(folder, {"rounds": 12, "psg": {"lr": 1e-4}})
    (folder / "psg.safetensors").write_bytes(b"x")
    claim_stage(folder, {"rounds": 12, "psg": {"lr": 1e-4}})  # same settings: kept
    assert (folder / "psg.safetensors").is_file()
    with pytest.raises(UserError, match=r"rounds: 12 -> 1.*--fresh"):
        claim_stage(folder, {"rounds": 1, "psg": {"lr": 1e-4}})
    assert (folder / "psg.safetensors").is_file()  # refused: nothing touched
    claim_stage(folder, {"rounds": 1, "psg": {"lr": 1e-4}}, fresh=True)
    assert not (folder / "psg.safetensors").exists()
    assert json.loads((folder / "settings.json").read_text())["rounds"] == 1
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "psg.safetensors").write_bytes(b"x")
    with pytest.raises(UserError, match="without recorded settings"):
        claim_stage(legacy, {"rounds": 1})


def test_settings_diff_names_nested_keys():
    assert settings_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == [
        "a.c: 2 -> 3", "d: '<absent>' -> 4"]


def _args(data_dir, **sets):
    out = []
    for item in tiny_overrides(data_dir, **sets):
        out += ["--set", item]
    return out


def test_changed_base_model_is_refused_then_retrained_under_fresh(tmp_path, capsys, masakhanews_dir):
    out = tmp_path / "run"
    methods = {"personalise.methods": '["none", "fedp2eft"]', "personalise.budgets": "[1]",
               "fedp2eft.rounds": 1, "fedp2eft.r_init": 2, "fedp2eft.lora_alpha": 4, "fedp2eft.batch_size": 8}
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *_args(masakhanews_dir, rounds=2, **methods)]) == 0
    base_settings = json.loads((out / "base_model" / "settings.json").read_text())
    assert base_settings["base_model"]["rounds"] == 2
    psg_settings = json.loads((out / "psg" / "seed0" / "settings.json").read_text())
    assert psg_settings["base"] == base_settings and psg_settings["rounds"] == 1
    capsys.readouterr()
    # a different base model: refused, naming the key; nothing is retrained or dropped
    before = json.loads((out / "results.json").read_text())["runs"]
    code = main(["run", "configs/quickstart.toml", "--out", str(out), *_args(masakhanews_dir, rounds=1, **methods)])
    err = capsys.readouterr().err
    assert code == 2
    assert "base_model.rounds: 2 -> 1" in err and "--fresh" in err
    assert json.loads((out / "results.json").read_text())["runs"] == before
    # --fresh: the base model and the PSG trained on it are trained again, the old runs are gone
    code = main(["run", "configs/quickstart.toml", "--out", str(out), "--fresh",
                 *_args(masakhanews_dir, rounds=1, **methods)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "base_model" / "settings.json").read_text())["base_model"]["rounds"] == 1
    assert json.loads((out / "psg" / "seed0" / "settings.json").read_text())["base"]["base_model"]["rounds"] == 1
    rounds = [json.loads(x) for x in (out / "base_model" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1]
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["base_model"]["rounds"] == 1
    assert {(r["method"], r["pool"]) for r in res["runs"]} == {("none", "seen"), ("fedp2eft", "seen")}
    # every run records the base model instance it started from; runs from another instance are refused
    fingerprint = json.loads((out / "base_model" / "model" / "fedp2eft_classifier.json").read_text())["fingerprint"]
    assert {r["base"] for r in res["runs"]} == {fingerprint}
    res["runs"][0]["base"] = "0123456789abcdef"  # as if from another instance ...
    del res["runs"][1]  # ... and one run to do now
    (out / "results.json").write_text(json.dumps(res))
    capsys.readouterr()
    code = main(["run", "configs/quickstart.toml", "--out", str(out), *_args(masakhanews_dir, rounds=1, **methods)])
    assert code == 2 and "another base model instance (0123456789abcdef" in capsys.readouterr().err
    # a changed PSG setting alone is refused by the PSG's folder too (results aside)
    from fedp2eft.bases import base_source
    from fedp2eft.fl.engines import stage_runner
    from fedp2eft.methods.fedp2eft import PSG_STAGE
    from fedp2eft.setup.federation import load_federation
    from fedp2eft.setup.layout import RunLayout
    from fedp2eft.stages import load_or_train

    cfg = load_config("configs/quickstart.toml", [*tiny_overrides(masakhanews_dir, rounds=1, **methods),
                                                   "fedp2eft.lambda_lr=0.1"])
    base = base_source(cfg, RunLayout(out)).open(cfg, len(load_federation(cfg).label_names), 0)
    with pytest.raises(UserError, match=r"psg.lambda_lr: 0.01 -> 0.1"):
        load_or_train(cfg, PSG_STAGE, RunLayout(out), 0, None, base.model, base.spec, stage_runner(cfg))


def test_stage_jobs_carry_their_seed(masakhanews_dir, monkeypatch):
    from fedp2eft.fl import worker
    from fedp2eft.fl.engines import stage_job
    from fedp2eft.methods.fedp2eft import PSG_STAGE
    from fedp2eft.methods.pf2lora import PF2LORA_STAGE
    from fedp2eft.methods.standard_fl import STANDARD_FL_STAGE

    cfg = load_config(None, tiny_overrides(masakhanews_dir, **{"experiment.seeds": "[0, 3]",
                                                               "base_model.seed": 7}))
    assert stage_job(cfg, PSG_STAGE, "off-the-shelf", 3).seed == 3
    base_job = stage_job(cfg, STANDARD_FL_STAGE, "off-the-shelf", cfg.base_model.seed)
    assert base_job.seed == 7 and base_job.settings["seed"] == 7
    assert STANDARD_FL_STAGE.client_settings(cfg).seed == 7  # the base model's own seed, always
    pf2lora_job = stage_job(cfg, PF2LORA_STAGE, "off-the-shelf", 3, 2)  # the runner injects seed and budget
    assert pf2lora_job.seed == 3 and pf2lora_job.budget == 2 and "seed" not in pf2lora_job.settings
    seen = []
    monkeypatch.setattr(worker, "cached_base", lambda exp, n, seed, base: seen.append(seed) or (None, None))
    worker.base_model(stage_job(cfg, PSG_STAGE, "off-the-shelf", 3))
    assert seen == [3]  # seed 3's PSG starts from seed 3's base (its head), not seeds[0]'s


def test_stage_records_keep_the_keys_of_folders_already_on_disk():
    """A stage folder's record must not change with a refactor, or every trained folder is refused as stale:
    the composed client settings (recipe, BT prior, regression, …) flatten to the keys the records have
    always had, with the seed (and a per-budget stage's budget) that the runner injects (issue 27)."""
    from fedp2eft.methods.registry import federated_stages
    from fedp2eft.stages import stage_record

    cfg = load_config("configs/quickstart.toml", ['personalise.head="adapter"', "personalise.lora_a_seed=42"])
    recipe = {"batch_size", "epochs", "head", "head_lr", "lora_a_seed", "max_grad_norm", "weight_decay"}
    bt = recipe | {"lr", "r_init", "lora_alpha", "alpha_s", "alpha_p", "lambda_lr"}
    expected = {
        "psg": bt | {"regress_steps", "regress_lr", "regress_loss", "psg_init", "seed"},
        "fedl2p": recipe | {"base_lr", "base_lr_lr", "batch_pairs", "net_lr", "neumann_lr", "neumann_terms",
                            "outer_steps", "parameterisation", "val_fraction", "seed", "budget"},
        "fedp2eft-step": bt | {"step_init", "grid", "type_grid", "regress_steps", "regress_lr", "val_fraction",
                               "hidden", "structure", "seed", "budget"},
        "pf2lora": {"local_rank", "lr", "head_lr", "lower_lr", "steps", "inner_steps", "batch_size", "head", "seed",
                    "budget"},
    }
    stages = federated_stages()
    for name, keys in expected.items():
        stage = stages[name]
        record = stage_record(cfg, stage, 3, 2 if stage.per_budget else None)
        assert set(record[name]) == keys, name
        assert record[name]["seed"] == 3 and record[name].get("budget", 2) == 2
    assert stage_record(cfg, stages["psg"], 0, None)["psg"]["head"] == "adapter"  # the recipe's, from [personalise]
    # a key added later is recorded only off the value earlier folders were trained with (issue 26's sweep)
    sweep = stage_record(cfg, stages["fedp2eft-sweep"], 3, 2)["fedp2eft-sweep"]
    assert sweep["sweep"] == "finetune" and "finetune_grid" not in sweep
    changed = load_config("configs/quickstart.toml", ['fedp2eft_step.sweep="finetune"', "fedp2eft_step.finetune_grid=[0.5, 4.0]"])
    step = stage_record(changed, stages["fedp2eft-step"], 3, 2)["fedp2eft-step"]
    assert step["sweep"] == "finetune" and step["finetune_grid"] == [0.5, 4.0]


def test_a_base_record_keeps_each_section_flat_as_its_toml_table():
    """A section that composes a shared part (``[pf2lora]``'s round settings) is recorded flat, as before the
    composition: a PF2LoRA base folder trained earlier stays valid (issue 27)."""
    from fedp2eft.setup.stage_state import base_settings

    cfg = load_config("configs/quickstart.toml", ['base_model.kind="pf2lora"'])
    record = base_settings(cfg)
    assert set(record["pf2lora"]) == {"rounds", "local_rank", "lr", "head_lr", "lower_lr", "steps", "inner_steps",
                                      "batch_size"}
    assert not any(isinstance(v, dict) for v in record["base_model"].values())
