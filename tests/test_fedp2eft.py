"""FedP²EFT: meta-features, the PSG, a federated PSG run through the in-process engine, and the
personalisation at a budget."""

from __future__ import annotations

import json
import re

import pytest
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedp2eft.config import load_config
from fedp2eft.data.records import Example
from fedp2eft.fl import client_app as real_client_app
from fedp2eft.fl.engines import train_stage
from fedp2eft.methods import ClientTask, PersonaliseConfig
from fedp2eft.methods.fedp2eft import PSG, PSG_STAGE, FedP2EFTMethod, new_psg
from fedp2eft.methods.fedp2eft.bt_lora_client import BTLoRAClientMethod
from fedp2eft.methods.fedp2eft.training import BTPrior, BTSettings
from fedp2eft.models import load_classifier
from fedp2eft.psg import feature_modules, meta_features
from fedp2eft.tasks import CLASSIFICATION
from fedp2eft.training import Recipe, linear_module_names
from fl_helpers import tiny_overrides


def toy_task(tok, n=12):
    rows = [Example(f"word{i} " * (1 + i % 5), i % 3, "xx") for i in range(n)]
    return ClientTask("xx-seen-00", "xx", CLASSIFICATION.encode(tok, rows, 16), CLASSIFICATION.encode(tok, rows, 16), CLASSIFICATION)


def test_psg_first_output_is_about_1e_minus_4():
    psg = PSG(num_features=20, num_modules=10, r_init=8)
    out = psg(torch.randn(20) * 5)
    assert out.shape == (10, 8)
    torch.testing.assert_close(out, torch.full((10, 8), 1e-4), atol=1e-6, rtol=0)


def test_hooked_features_equal_direct_computation():
    torch.manual_seed(0)
    model, tok = load_classifier("tiny-bert", 3)
    model.eval()
    task = toy_task(tok, n=10)
    feats = meta_features(model, task.train, batch_size=3)  # several batches: streaming variance
    names = feature_modules(model)
    assert feats.shape == (2 * len(names),)
    # direct: capture every input of each module over the whole set at once (no padding)
    captured = {n: [] for n in names}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: captured[n].append(i[0])) for n in names]
    with torch.no_grad():
        for idx in range(len(task.train)):
            b = task.train.batch([idx])
            model(b["input_ids"], b["attention_mask"])
    for h in hooks:
        h.remove()
    for k, n in enumerate(names):
        x = torch.cat([t.reshape(-1) for t in captured[n]]).double()
        assert abs(feats[2 * k].item() - x.mean().item()) < 1e-5
        assert abs(feats[2 * k + 1].item() - (x.var(unbiased=False) + 1e-5).sqrt().item()) < 1e-4


def recording_client_app(log: list) -> ClientApp:
    app = ClientApp()
    app.query()(real_client_app.query)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        log.append(("in", list(msg.content.array_records["arrays"].keys())))
        reply = real_client_app.train(msg, ctx)
        log.append(("out", list(reply.content.array_records["arrays"].keys())))
        return reply

    return app


def test_two_round_federated_psg_run_sends_only_psg_weights(tmp_path, masakhanews_dir):
    cfg = load_config(None, tiny_overrides(masakhanews_dir, **{
        "base_model.kind": '"off-the-shelf"', "fedp2eft.rounds": 2, "fedp2eft.r_init": 4,
        "fedp2eft.lora_alpha": 8, "fedp2eft.local_epochs": 1, "fedp2eft.batch_size": 8}))
    log: list = []
    psg = train_stage(cfg, PSG_STAGE, "off-the-shelf", seed=0, out_dir=tmp_path, resume=False,
                      client_app=recording_client_app(log))
    psg_keys = sorted(dict(psg.state_dict()))
    assert len(log) == 2 * 2 * 2  # 2 rounds x 2 clients x (in, out)
    for _, keys in log:
        assert sorted(keys) == psg_keys  # only the PSG travels: no LoRA, no base weights
        assert not any("lora" in k for k in keys)
    rounds = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert len(rounds) == 2 and '"l1"' in rounds[0]
    fresh = new_psg(load_classifier("tiny-bert", 7)[0], 4, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(psg.state_dict().values(), fresh.state_dict().values()))


def test_personalisation_at_every_budget_uses_the_psg():
    torch.manual_seed(0)
    base, tok = load_classifier("tiny-bert", 3)
    task = toy_task(tok)
    psg = new_psg(base, r_init=4)
    with torch.no_grad():  # a PSG whose λ prefer the attention modules
        psg.net[2].bias.copy_(torch.linspace(1.0, 0.01, psg.net[2].bias.numel()))
    method = FedP2EFTMethod(psg, BTSettings(BTPrior(r_init=4, lora_alpha=8)))
    settings = PersonaliseConfig(recipe=Recipe(epochs=1, batch_size=4, lr=1e-3))
    for budget in (1, 2, 4):
        preds = method.personalise(base, task, budget, settings, 0)
        assert len(preds) == len(task.test)
    assert len(linear_module_names(base)) == 12


def test_run_stages_then_export_a_client(tmp_path, masakhanews_dir, capsys):
    import json

    from fedp2eft.cli import main

    sets = tiny_overrides(masakhanews_dir, **{
        "base_model.rounds": 2, "fedp2eft.rounds": 2, "fedp2eft.r_init": 4, "fedp2eft.lora_alpha": 8,
        "fedp2eft.local_epochs": 1, "fedp2eft.batch_size": 8, "personalise.methods": '["none","lora","fedp2eft"]',
        "personalise.pools": '["seen","unseen"]', "personalise.budgets": "[2,4]"})
    args = [x for s in sets for x in ("--set", s)]
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *args]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["budget"], r["pool"]) for r in res["runs"] if r["method"] == "fedp2eft"} == {
        ("fedp2eft", b, p) for b in (2, 4) for p in ("seen", "unseen")}
    for name in ("psg.safetensors", "rank_structure_seen.png", "lambda_distance_unseen.png", "lambda_report.json"):
        assert (out / "psg" / "seed0" / name).is_file(), name
    report = json.loads((out / "psg" / "seed0" / "lambda_report.json").read_text())
    assert report["pools"]["unseen"]["languages"] == ["hau", "yor"]
    # every stage resumes from its outputs: a second run trains nothing and changes nothing
    before = (out / "psg" / "seed0" / "psg.safetensors").read_bytes()
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *args]) == 0
    assert "resuming: 10 of 10 runs" in capsys.readouterr().err
    assert (out / "psg" / "seed0" / "psg.safetensors").read_bytes() == before
    folder = tmp_path / "adapter"
    # the run's own settings come from its folder: no config, no --set repeated
    assert main(["export", "--run", str(out), "--client", "yor-unseen-00", "--budget", "2", "--out", str(folder)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    check_loads_with_stock_transformers(folder, tmp_path)
    # LoRA exports too (its own model, no PSG needed); a method that gives no model is refused by name
    lora_folder = tmp_path / "lora-adapter"
    assert main(["export", "--run", str(out), "--client", "yor-unseen-00", "--method", "lora", "--out",
                 str(lora_folder)]) == 0
    check_loads_with_stock_transformers(lora_folder, tmp_path)
    assert json.loads((lora_folder / "fedp2eft_export.json").read_text())["method"] == "lora"
    assert main(["export", "--run", str(out), "--client", "yor-unseen-00", "--method", "none", "--out",
                 str(tmp_path / "x")]) == 2
    assert main(["export", "--run", str(out), "--client", "yor-unseen-00", "--budget", "9", "--out",
                 str(tmp_path / "x")]) == 2
    assert "fedp2eft.r_init = 4" in capsys.readouterr().err
    assert main(["export", "--run", str(out), "--client", "zz-unseen-00", "--out", str(tmp_path / "x")]) == 2
    assert main(["export", "--run", str(tmp_path / "nothing"), "--client", "yor-unseen-00",
                 "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def check_loads_with_stock_transformers(folder, tmp_path):
    """The export loads with transformers + peft alone (no fedp2eft module imported, no missing or
    unexpected weights, each module's own rank) and predicts what fedp2eft's personalised model did."""
    import subprocess
    import sys

    from fl_helpers import python_env

    code = (folder / "LOAD.md").read_text().split("```python\n")[1].split("```")[0]
    probe = code + (
        "import json, sys, warnings\n"
        "assert not [m for m in sys.modules if m.startswith('fedp2eft')]\n"
        "ranks = {n: m.r['default'] for n, m in model.named_modules() if hasattr(m, 'lora_A') and m.lora_A}\n"
        "print(json.dumps({'logits': logits[0].tolist(), 'ranks': ranks}))\n")
    env = python_env(tmp_path)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", probe], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "missing" not in proc.stderr.lower() and "unexpected" not in proc.stderr.lower()
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    meta = json.loads((folder / "fedp2eft_export.json").read_text())
    torch.testing.assert_close(torch.tensor(got["logits"]), torch.tensor(meta["probe_logits"]), atol=1e-4, rtol=1e-4)
    pattern = json.loads((folder / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
    want = {re.sub(r"\\(.)", r"\1", k): v for k, v in pattern.items()}
    assert {n.removeprefix("base_model.model."): r for n, r in got["ranks"].items()} == want  # each its own rank


def test_mean_one_rescaling_keeps_selection():
    from fedp2eft.adapters import prune_to_budget
    from fedp2eft.methods.fedp2eft import rescale_to_mean_one

    lam = {"a": torch.tensor([0.2, 0.1, 0.05]), "b": torch.tensor([0.3, 0.01, 0.02])}
    out = rescale_to_mean_one(lam, budget=1)
    kept = prune_to_budget(out, 1)
    assert {k: v.numel() for k, v in kept.items()} == {k: v.numel() for k, v in prune_to_budget(lam, 1).items()}
    assert torch.cat(list(kept.values())).mean().item() == pytest.approx(1.0)


def test_bt_lora_per_client_learns_lambda_once_for_every_budget():
    torch.manual_seed(0)
    base, tok = load_classifier("tiny-bert", 3)
    task = toy_task(tok)
    method = BTLoRAClientMethod(BTSettings(BTPrior(r_init=4, lora_alpha=8), Recipe(epochs=2, batch_size=4)))
    settings = PersonaliseConfig(recipe=Recipe(epochs=1, batch_size=4, lr=1e-3))
    for budget in (1, 2, 4):
        assert len(method.personalise(base, task, budget, settings, 0)) == len(task.test)
    (key, lam), = method._lambdas.items()
    assert key == ("xx-seen-00", 0, len(task.train))  # one λ per client, seed and the rows it learned from
    assert all(not torch.allclose(v, torch.full_like(v, 1e-4)) for v in lam.values())  # λ moved from 1e-4


def test_psg_training_resumed_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, masakhanews_dir):
    sets = {"base_model.kind": '"off-the-shelf"', "fedp2eft.r_init": 4, "fedp2eft.lora_alpha": 8,
            "fedp2eft.local_epochs": 1, "fedp2eft.batch_size": 8, "federation.checkpoint_every": 2}
    full = train_stage(load_config(None, tiny_overrides(masakhanews_dir, **sets, **{"fedp2eft.rounds": 4})),
                       PSG_STAGE, "off-the-shelf", seed=0, out_dir=tmp_path / "full", resume=False)
    train_stage(load_config(None, tiny_overrides(masakhanews_dir, **sets, **{"fedp2eft.rounds": 2})),
                PSG_STAGE, "off-the-shelf", seed=0, out_dir=tmp_path / "cut", resume=False)
    resumed = train_stage(load_config(None, tiny_overrides(masakhanews_dir, **sets, **{"fedp2eft.rounds": 4})),
                          PSG_STAGE, "off-the-shelf", seed=0, out_dir=tmp_path / "cut", resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
