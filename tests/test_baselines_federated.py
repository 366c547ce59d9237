"""The federated baselines on real MasakhaNEWS rows with tiny models: FedL2P's learning-rate
generator and PF2LoRA's two-level adapter through the in-process engine, and all six methods of
the comparison from ``fedp2eft run``."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from fedp2eft.config import load_config
from fedp2eft.fl.engines import run_stage, train_stage
from fedp2eft.methods import PersonaliseConfig, get_method
from fedp2eft.methods.fedl2p import FEDL2P_STAGE, new_lr_generator
from fedp2eft.methods.pf2lora import (
    PF2LORA_STAGE,
    PF2LoRASettings,
    PF2LoRATraining,
    initial_shared_state,
    pf2lora_client_update,
)
from fedp2eft.models import load_classifier
from fedp2eft.training import Recipe
from fl_helpers import tiny_overrides
from test_fedp2eft import recording_client_app, toy_task

SIX = '["lora","adalora","bt-lora","fedl2p","pf2lora","fedp2eft"]'


def tiny_cfg(masakhanews_dir, **extra):
    return load_config(None, tiny_overrides(masakhanews_dir, **{
        "base_model.kind": '"off-the-shelf"', "personalise.batch_size": 8, "fedl2p.rounds": 2,
        "pf2lora.rounds": 2, "pf2lora.batch_size": 8, "pf2lora.steps": 2, **extra}))


def test_fedl2p_rounds_send_only_the_generator_and_move_the_rates(tmp_path, masakhanews_dir):
    cfg = tiny_cfg(masakhanews_dir)
    log: list = []
    generator = train_stage(cfg, FEDL2P_STAGE, "off-the-shelf", seed=0, out_dir=tmp_path, budget=2, resume=False,
                            client_app=recording_client_app(log))
    keys = sorted(dict(generator.state_dict()))
    assert len(log) == 2 * 2 * 2 and all(sorted(k) == keys for _, k in log)  # no LoRA, no base weights
    base, tok = load_classifier("tiny-bert", 7)
    fresh = new_lr_generator(base, cfg.personalise.recipe.lr, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(generator.state_dict().values(), fresh.state_dict().values()))
    rounds = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and all(r["val_loss"] > 0 and r["lr_mean"] > 0 for r in rounds)
    task = toy_task(tok)
    preds = get_method("fedl2p", resources={2: generator}).personalise(
        base, task, 2, PersonaliseConfig(recipe=Recipe(epochs=1, batch_size=4)), 0)
    assert len(preds) == len(task.test)


def test_pf2lora_level_two_never_travels_and_persists_on_the_client(tmp_path, masakhanews_dir):
    cfg = tiny_cfg(masakhanews_dir)
    log: list = []
    clients = tmp_path / "run" / "clients"  # the stage folder's: each client's own storage
    shared = run_stage(cfg, PF2LORA_STAGE, "off-the-shelf", seed=0, out_dir=tmp_path / "run", budget=4, resume=False,
                       client_app=recording_client_app(log))
    assert len(log) == 2 * 2 * 2
    for _, keys in log:  # only level 1 (A, B) and the head travel
        assert keys and all(k.endswith((".lora_A", ".lora_B")) or k.startswith("head.") for k in keys)
    assert sorted(p.stem for p in clients.glob("*.safetensors")) == ["hau-seen-00", "hau-seen-01",
                                                                    "yor-seen-00", "yor-seen-01"]
    local = load_file(str(clients / "hau-seen-00.safetensors"))
    assert all(k.endswith((".local_C", ".local_D")) for k in local) and local[next(iter(local))].shape[0] == 1
    assert any(shared[k].abs().sum() > 0 for k in shared if k.endswith(".lora_B"))

    # a client's second round starts from its stored level 2 (with the lower level frozen it stays put)
    base, tok = load_classifier("tiny-bert", 3)
    task = toy_task(tok)
    s = PF2LoRASettings(PF2LoRATraining(batch_size=4, steps=3, lower_lr=0.5, lr=1e-3))
    state = initial_shared_state(base, s, 4, 0)
    folder = tmp_path / "own"
    pf2lora_client_update(base, state, task, s, 4, 0, folder)
    first = load_file(str(folder / f"{task.client_id}.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in first.items() if k.endswith(".local_D"))
    pf2lora_client_update(base, state, task, PF2LoRASettings(PF2LoRATraining(batch_size=4, steps=1, lower_lr=0.0)), 4,
                          0, folder)
    second = load_file(str(folder / f"{task.client_id}.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_six_methods_run_resume_and_refuse_mixed_stage_settings(tmp_path, masakhanews_dir, capsys):
    from fedp2eft.cli import main

    sets = tiny_overrides(masakhanews_dir, **{
        "base_model.rounds": 1, "fedp2eft.rounds": 1, "fedp2eft.r_init": 4, "fedp2eft.lora_alpha": 8,
        "fedp2eft.batch_size": 8, "fedl2p.rounds": 1, "pf2lora.rounds": 1, "pf2lora.batch_size": 8,
        "pf2lora.steps": 2, "personalise.batch_size": 8, "personalise.methods": SIX,
        "personalise.pools": '["seen","unseen"]', "personalise.budgets": "[2]"})
    args = [x for s in sets for x in ("--set", s)]
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *args]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["pool"]) for r in res["runs"]} == {
        (m, p) for m in json.loads(SIX) for p in ("seen", "unseen")}
    assert all(0 <= r["mean"] <= 1 for r in res["runs"])
    assert all(("settings" in r) == (r["method"] in ("fedl2p", "pf2lora")) for r in res["runs"])
    for stage in ("fedl2p/seed0/r2/generator.safetensors", "pf2lora/seed0/r2/shared.safetensors"):
        assert (out / stage).is_file(), stage
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *args]) == 0
    assert "resuming: 12 of 12 runs" in capsys.readouterr().err
    # other PF2LoRA settings re-run only PF2LoRA, and its trained stage folder refuses to be reused
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *args, "--set", "pf2lora.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "resuming: 10 of 12 runs" in err and "trained with other settings" in err
