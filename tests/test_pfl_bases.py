"""Personalised-FL base models (FedDPA-T, DEPT, PF2LoRA) on real rows with tiny models: what travels,
what each client keeps, how seen and unseen clients' bases are built, and FedP²EFT with every baseline
personalising each of them on XNLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedp2eft.bases import TrainedBase
from fedp2eft.config import load_config
from fedp2eft.fl import worker
from fedp2eft.fl.engines import run_stage, stage_job, stage_runner
from fedp2eft.methods.dept import DEPT_STAGE, embedding_parameters
from fedp2eft.methods.feddpa import FEDDPA_STAGE
from fedp2eft.methods.fedp2eft import PSG_STAGE
from fedp2eft.models import load_classifier
from fedp2eft.setup.federation import load_federation
from fedp2eft.setup.layout import RunLayout
from fl_helpers import tiny_overrides
from test_fedp2eft import recording_client_app

EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def pfl_cfg(data_dir, kind, **extra):
    return load_config(None, tiny_overrides(data_dir, **{"base_model.kind": json.dumps(kind), **extra}))


def test_feddpa_sends_only_the_global_adapter_and_keeps_the_local_one(tmp_path, masakhanews_dir):
    cfg = pfl_cfg(masakhanews_dir, "feddpa-t", **{"base_model.lora_rank": 4, "base_model.lora_alpha": 4})
    log: list = []
    run_stage(cfg, FEDDPA_STAGE, "off-the-shelf", 0, tmp_path, resume=False, client_app=recording_client_app(log))
    assert len(log) == 2 * 2 * 2
    for _, keys in log:  # the global adapter (A, B) and the head travel; the local adapter never does
        assert keys and all(k.endswith((".lora_A", ".lora_B")) or k.startswith("head.") for k in keys)
        assert not any("local" in k for k in keys)
    clients = tmp_path / "clients"
    stored = load_file(str(clients / "hau-seen-00.safetensors"))
    part = load_file(str(clients / "hau-seen-00.part.safetensors"))
    assert all(k.endswith((".local_C", ".local_D")) for k in stored) and stored[next(iter(stored))].shape[0] == 4
    name = next(k for k in stored if k.endswith(".local_C"))[: -len(".local_C")]
    torch.testing.assert_close(part[f"lowrank.{name}.A"], stored[f"{name}.local_C"])
    torch.testing.assert_close(part[f"lowrank.{name}.B"], 1.0 * stored[f"{name}.local_D"])  # alpha 4 / r 4
    assert any(v.abs().sum() > 0 for k, v in stored.items() if k.endswith(".local_D"))  # it trained


def test_dept_keeps_every_embedding_table_on_the_client(tmp_path, masakhanews_dir):
    cfg = pfl_cfg(masakhanews_dir, "dept")
    log: list = []
    run_stage(cfg, DEPT_STAGE, "off-the-shelf", 0, tmp_path, resume=False, client_app=recording_client_app(log))
    base, tok = load_classifier("tiny-bert", 7)
    local = embedding_parameters(base)
    assert sorted(n.split(".")[-2] for n in local) == sorted(EMBEDDINGS)
    for _, keys in log:
        assert keys and not set(keys) & set(local) and not any(e in k for k in keys for e in EMBEDDINGS)
        assert "backbone.embeddings.LayerNorm.weight" in keys and "head.weight" in keys  # the rest is averaged
    fed = load_federation(cfg)
    client = next(c for c in fed.clients if c.cid == "hau-seen-00")
    part = load_file(str(tmp_path / "clients" / "hau-seen-00.part.safetensors"))
    word = "backbone.embeddings.word_embeddings.weight"
    seen_tokens = {t for ex in client.train for t in tok(ex.text, truncation=True, max_length=16)["input_ids"]}
    rows = set(part[f"rows.{word}.index"].tolist())
    assert rows and rows <= seen_tokens  # only rows of tokens the client saw changed and are stored
    assert part[f"rows.{word}.values"].shape == (len(rows), base.backbone.config.hidden_size)


@pytest.mark.parametrize("kind", ["feddpa-t", "dept", "pf2lora"])
def test_seen_clients_get_their_own_part_and_unseen_ones_the_shared_base(tmp_path, masakhanews_dir, kind):
    cfg = pfl_cfg(masakhanews_dir, kind, **{"personalise.pools": '["seen","unseen"]', "pf2lora.steps": 2,
                                            "pf2lora.batch_size": 8})
    layout = RunLayout(tmp_path)
    source = TrainedBase(layout, kind)
    source.prepare(cfg, layout, stage_runner(cfg), fresh=False, log=lambda *_: None)
    meta = json.loads((layout.base_model / "fedp2eft_classifier.json").read_text())
    assert meta["kind"] == kind and meta["clients_with_parts"] == meta["seen_clients"] == 4 and meta["unseen"]
    shared = source.open(cfg, 7, seed=0)
    unseen = shared.for_client("hau-unseen-00")
    assert unseen is shared.model  # no part: the shared base (FedDPA-T / PF2LoRA: a fresh local has D = 0)
    seen = shared.for_client("hau-seen-00")
    a, b = dict(shared.model.named_parameters()), dict(seen.named_parameters())
    changed = {n for n in a if not torch.equal(a[n], b[n])}
    part = load_file(str(layout.base_stage / "clients" / "hau-seen-00.part.safetensors"))
    if kind == "dept":  # its own embedding rows, nothing else
        assert changed and {n.split(".")[-2] for n in changed} <= set(EMBEDDINGS)
        pretrained, _ = load_classifier("tiny-bert", 7)
        off = dict(pretrained.named_parameters())
        assert all(torch.equal(a[n], off[n]) for n in embedding_parameters(pretrained))  # unseen: pretrained tables
    else:  # W + B A on every adapted linear layer
        name = next(k for k in part if k.endswith(".A"))[len("lowrank."): -len(".A")]
        expected = a[f"{name}.weight"] + part[f"lowrank.{name}.B"] @ part[f"lowrank.{name}.A"]
        torch.testing.assert_close(b[f"{name}.weight"], expected)
        assert changed == {f"{k[len('lowrank.'):-len('.A')]}.weight" for k in part if k.endswith(".A")}
    # a stage trained on top (FedP²EFT's PSG) runs each client on its own base, read from its storage
    job = stage_job(cfg, PSG_STAGE, shared.spec, 0)
    own = dict(worker.client_model(job, "hau-seen-00").named_parameters())
    assert all(torch.equal(own[n], b[n]) for n in b)
    assert worker.client_model(job, "hau-unseen-00") is worker.base_model(job)[0]


@pytest.mark.parametrize("kind", ["feddpa-t", "dept", "pf2lora"])
def test_every_method_personalises_each_pfl_base_on_xnli(tmp_path, xnli_dir, kind):
    from fedp2eft.cli import main

    sets = tiny_overrides(xnli_dir, languages=("de", "sw"), **{
        "data.dataset": '"xnli"', "data.train_per_pool": 60, "data.test_per_pool": 12,
        "base_model.kind": json.dumps(kind), "fedp2eft.rounds": 1, "fedp2eft.r_init": 4, "fedp2eft.lora_alpha": 8,
        "fedp2eft.batch_size": 8, "pf2lora.rounds": 1, "pf2lora.steps": 2, "pf2lora.batch_size": 8,
        "personalise.batch_size": 8, "personalise.methods": '["none","lora","fedp2eft","pf2lora"]',
        "personalise.pools": '["seen","unseen"]', "personalise.budgets": "[2]"})
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *[x for s in sets for x in ("--set", s)]]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {(r["method"], r["pool"]) for r in res["runs"]} == {
        (m, p) for m in ("none", "lora", "fedp2eft", "pf2lora") for p in ("seen", "unseen")}
    assert all(r["base_kind"] == kind and 0 <= r["mean"] <= 1 and r["per_language"].keys() == {"de", "sw"}
               for r in res["runs"])


@pytest.mark.parametrize("kind", ["standard-fl", "feddpa-t", "dept", "pf2lora"])
def test_a_base_folder_records_every_setting_its_stage_trains_with(masakhanews_dir, kind):
    """Whatever changes a base stage's client settings changes the base's record, so a base-model folder
    trained otherwise is refused (or retrained under --fresh), never resumed."""
    from fedp2eft.methods.registry import base_kinds
    from fedp2eft.setup.stage_state import base_settings

    stage, cfg = base_kinds()[kind], pfl_cfg(masakhanews_dir, kind)
    changed = 0
    for key, value in (("base_model.lr", 0.5), ("base_model.lora_rank", 3), ("base_model.local_epochs", 3),
                       ("pf2lora.steps", 7), ("pf2lora.lower_lr", 0.5), ("pf2lora.inner_steps", 2),
                       ("personalise.head", '"adapter"'), ("fedp2eft.rounds", 3)):
        other = pfl_cfg(masakhanews_dir, kind, **{key: value})
        if stage.client_settings(other) != stage.client_settings(cfg):
            changed += 1
            assert base_settings(other) != base_settings(cfg), key
    assert changed >= 1
