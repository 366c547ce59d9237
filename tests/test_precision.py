"""Mixed precision (``experiment.precision``): bf16 matmuls inside the forward pass, fp32 parameters, λ,
optimiser states, losses and merges; ``auto`` is bf16 only where the device runs bf16 natively; the stage
records and results say which precision ran. Speed and accuracy are measured by ``benchmarks/precision.py``."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model

from fedp2eft.adapters.bt_lora import bt_lora_config, lambda_parameters
from fedp2eft.config import load_config
from fedp2eft.errors import UserError
from fedp2eft.models import load_classifier
from fedp2eft.models import precision as precision_module
from fedp2eft.models.causal_lm import CausalLM
from fedp2eft.models.precision import resolve_precision, set_precision
from fedp2eft.models.tiny import build_tiny
from fedp2eft.training import linear_module_names


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    model, tok = load_classifier("tiny-bert", 3)
    return model, tok


def linear_output_dtypes(model: torch.nn.Module) -> tuple[set, list]:
    seen: set = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return seen, hooks


def test_bf16_runs_the_backbones_matmuls_in_bf16_and_keeps_parameters_optimiser_and_lambda_fp32(classifier):
    base, tok = classifier
    model = get_peft_model(copy.deepcopy(base), bt_lora_config(linear_module_names(base), r=4, lora_alpha=8))
    assert set_precision(model.base_model.model, "bf16") == "bf16"
    enc = tok(["Habari ya asubuhi", "a b c d e f"], padding=True, return_tensors="pt")
    seen, hooks = linear_output_dtypes(model.base_model.model.backbone)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    for h in hooks:
        h.remove()
    assert seen == {torch.bfloat16} and logits.dtype == torch.float32  # matmuls bf16, the head and loss fp32
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2]))
    loss.backward()
    optimiser.step()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in trained)
    states = [t for s in optimiser.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    assert states and all(t.dtype == torch.float32 for t in states)
    assert all(lam.dtype == torch.float32 for lam in lambda_parameters(model))
    merged = copy.deepcopy(model).merge_and_unload()  # outside the forward pass: fp32 arithmetic
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    copied = copy.deepcopy(model.base_model.model)
    assert copied.autocast_dtype is torch.bfloat16  # the copies a stage trains inherit it
    assert set_precision(copied, "fp32") == "fp32"
    seen, hooks = linear_output_dtypes(copied.backbone)
    copied(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    assert seen == {torch.float32}
    for h in hooks:
        h.remove()


def test_bf16_logits_are_close_to_fp32(classifier):
    base, tok = classifier
    enc = tok(["Habari ya asubuhi", "a b c d e f"], padding=True, return_tensors="pt")
    fp32, bf16 = copy.deepcopy(base).eval(), copy.deepcopy(base).eval()
    set_precision(bf16, "bf16")
    with torch.no_grad():
        a, b = fp32(**enc), bf16(**enc)
    assert not torch.equal(a, b)  # it did change the arithmetic
    torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_a_causal_lms_transformer_and_projection_run_in_bf16_and_its_loss_in_fp32():
    backbone, tok = build_tiny("tiny-llama", causal_lm=True)
    lm = CausalLM(backbone)
    set_precision(lm, "bf16")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    seen, hooks = linear_output_dtypes(lm)
    states = lm(input_ids=ids, attention_mask=torch.ones_like(ids), target_mask=torch.tensor([[0, 1, 1, 1, 0]]).bool())
    loss = states.cross_entropy(torch.tensor([7, 8, 9]))
    for h in hooks:
        h.remove()
    assert torch.bfloat16 in seen and loss.dtype == torch.float32 and states.logits().dtype == torch.float32
    loss.backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in lm.parameters())


def test_auto_is_bf16_only_where_the_device_runs_it_natively(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", cpu)


def test_the_setting_is_checked_and_a_stage_records_a_bf16_precision(masakhanews_dir):
    from fedp2eft.methods.standard_fl import STANDARD_FL_STAGE
    from fedp2eft.stages import stage_record

    with pytest.raises(UserError, match="precision"):
        load_config(None, ['experiment.precision="fp16"'])
    sets = [f'data.path="{masakhanews_dir}"', 'base_model.kind="standard-fl"']
    fp32 = load_config(None, sets)
    bf16 = load_config(None, [*sets, 'experiment.precision="bf16"'])
    assert "precision" not in stage_record(fp32, STANDARD_FL_STAGE, 0, None)  # stage folders written before stay valid
    assert stage_record(bf16, STANDARD_FL_STAGE, 0, None)["precision"] == "bf16"


def test_every_method_and_stage_runs_in_bf16_and_records_it(tmp_path, masakhanews_dir, capsys):
    """The whole pipeline at bf16 on tiny-bert and real rows: the base, the PSG, FedL2P (second derivatives
    through autocast), PF2LoRA and AdaLoRA stages and personalisations all run, scores are finite, and every
    stage folder records the precision (so an fp32 run of the same folder is refused)."""
    import json

    from fedp2eft.cli import main
    from fl_helpers import tiny_overrides

    methods = '["none","lora","adalora","bt-lora","fedl2p","pf2lora","fedp2eft"]'
    sets = tiny_overrides(masakhanews_dir, **{
        "experiment.precision": '"bf16"', "base_model.kind": '"standard-fl"', "base_model.rounds": 1,
        "fedp2eft.rounds": 1, "fedp2eft.r_init": 4, "fedp2eft.lora_alpha": 8, "fedp2eft.batch_size": 8,
        "fedl2p.rounds": 1, "pf2lora.rounds": 1, "pf2lora.batch_size": 8, "pf2lora.steps": 2,
        "personalise.batch_size": 8, "personalise.methods": methods, "personalise.pools": '["unseen"]',
        "personalise.budgets": "[2]"})
    args = [x for s in sets for x in ("--set", s)]
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *args]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {r["method"] for r in res["runs"]} == set(json.loads(methods))
    assert all(0 <= r["mean"] <= 1 for r in res["runs"])
    records = [json.loads(p.read_text()) for p in out.rglob("settings.json")]
    assert len(records) >= 4  # base, PSG, FedL2P, PF2LoRA
    assert all(r.get("precision") == "bf16" for r in records), [r.get("precision") for r in records]
    fp32 = [x for s in sets if s != 'experiment.precision="bf16"' for x in ("--set", s)]
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *fp32]) != 0  # its stages ran in bf16
    assert "precision" in capsys.readouterr().err
