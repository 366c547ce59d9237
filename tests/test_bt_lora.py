"""BT-LoRA layer, priors, pruning and export (FedP²EFT §3.2, eq. 4-5)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from fedp2eft.adapters import bt_penalty, export_plain_lora, prune_to_budget
from fedp2eft.adapters.bt_lora import bt_lora_config, bt_modules, lambdas_by_module, set_lambdas
from fedp2eft.adapters.priors import clamp_st, prior_penalty, significance_penalty
from fedp2eft.errors import UserError
from fedp2eft.models import load_classifier
from fedp2eft.training import linear_module_names


@pytest.fixture(scope="module")
def base_tok():
    torch.manual_seed(0)
    base, tok = load_classifier("tiny-bert", 3)
    return base.eval(), tok


def batch(tok):
    enc = tok(["a b c d", "e f"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def randomise_b(model):
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)


def test_lambda_one_is_plain_lora_and_zero_is_base(base_tok):
    base, tok = base_tok
    targets = linear_module_names(base)
    bt = get_peft_model(copy.deepcopy(base), bt_lora_config(targets, r=4, lora_alpha=8, init_lambda=1.0)).eval()
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=targets)).eval()
    randomise_b(bt)
    bt_state = {k: v for k, v in bt.state_dict().items() if "lora_lambda" not in k}
    lora.load_state_dict(bt_state, strict=True)  # same A and B
    x = batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(bt(*x), lora(*x))
        assert not torch.allclose(bt(*x), base(*x))
        set_lambdas(bt, {n: torch.zeros(4) for n in bt_modules(bt)})
        torch.testing.assert_close(bt(*x), base(*x))


def test_merge_and_peft_save_load_round_trip(base_tok, tmp_path):
    base, tok = base_tok
    targets = linear_module_names(base)
    cfg = bt_lora_config(targets, r=4, lora_alpha=8, init_lambda=0.5)
    bt = get_peft_model(copy.deepcopy(base), cfg).eval()
    randomise_b(bt)
    set_lambdas(bt, {n: torch.rand(4) for n in bt_modules(bt)})
    x = batch(tok)
    with torch.no_grad():
        y = bt(*x)
        bt.save_pretrained(tmp_path / "bt")
        loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "bt",
                                           config=bt_lora_config(targets, r=4, lora_alpha=8)).eval()
        torch.testing.assert_close(loaded(*x), y)
        merged = bt.merge_and_unload()
        torch.testing.assert_close(merged(*x), y, atol=1e-5, rtol=1e-4)


def test_penalties_on_hand_worked_tensors():
    lam = torch.tensor([0.5, 2.0])
    b = torch.tensor([[1.0, -2.0], [3.0, 0.5]])  # columns: |.|_1 = 4 and 2.5
    assert significance_penalty(lam, b).item() == pytest.approx(4 / 0.5 + 2.5 / 2.0)
    assert prior_penalty(lam).item() == pytest.approx(math.log(0.5) + 50 + math.log(2.0) + 200)
    # clamped to [1e-4, 1000] in value, gradient passes straight through
    x = torch.tensor([1e-6, 5.0, 2000.0], requires_grad=True)
    y = clamp_st(x)
    assert y.tolist() == pytest.approx([1e-4, 5.0, 1000.0])
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_bt_penalty_scales_by_alpha_over_n(base_tok):
    base, _ = base_tok
    bt = get_peft_model(copy.deepcopy(base), bt_lora_config(linear_module_names(base), r=2, init_lambda=0.1))
    randomise_b(bt)
    mods = bt_modules(bt)
    s = sum(significance_penalty(m.lora_lambda["default"], m.lora_B["default"].weight) for m in mods.values())
    p = sum(prior_penalty(m.lora_lambda["default"]) for m in mods.values())
    got = bt_penalty(bt, num_examples=50, alpha_s=100.0, alpha_p=0.01)
    assert got.item() == pytest.approx((100 / 50) * s.item() + (0.01 / 50) * p.item(), rel=1e-5)


def test_pruning_keeps_global_top_r_times_l():
    lambdas = {"m0": torch.tensor([0.9, 0.1, 0.8, 0.05]), "m1": torch.tensor([0.01, 0.02, 0.03, 0.04]),
               "m2": torch.tensor([0.7, 0.6, 0.5, 0.2])}
    kept = prune_to_budget(lambdas, budget=2)  # 6 of 12 ranks
    assert sum(v.numel() for v in kept.values()) == 6
    assert "m1" not in kept  # a module with no rank carries no adapter
    assert kept["m0"].tolist() == pytest.approx([0.9, 0.8])
    assert kept["m2"].tolist() == pytest.approx([0.7, 0.6, 0.5, 0.2])
    with pytest.raises(UserError, match="exceeds"):
        prune_to_budget(lambdas, budget=5)
    with pytest.raises(UserError, match="NaN"):
        prune_to_budget({"m": torch.tensor([float("nan"), 1.0])}, budget=1)


def test_export_round_trip_without_fedp2eft_layers(base_tok, tmp_path):
    base, tok = base_tok
    targets = linear_module_names(base)
    lambdas = {n: torch.rand(8) for n in targets}
    kept = prune_to_budget(lambdas, budget=2)
    rank_pattern = {n: v.numel() for n, v in kept.items()}
    cfg = bt_lora_config(list(kept), r=8, lora_alpha=16, rank_pattern=rank_pattern,
                         alpha_pattern={n: 2 * r for n, r in rank_pattern.items()}, modules_to_save=["head"])
    bt = get_peft_model(copy.deepcopy(base), cfg).eval()
    randomise_b(bt)
    set_lambdas(bt, kept, requires_grad=False)
    assert {n: v.numel() for n, v in lambdas_by_module(bt).items()} == rank_pattern
    with torch.no_grad():
        for n, p in bt.named_parameters():
            if "modules_to_save" in n:
                p.add_(0.3)
    x = batch(tok)
    folder = export_plain_lora(bt, base, tmp_path / "plain", modules_to_save=["head"])
    with torch.no_grad():
        plain = PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
        assert not any(type(m).__name__ == "BTLoraLinear" for m in plain.modules())
        torch.testing.assert_close(plain(*x), bt(*x), atol=1e-5, rtol=1e-4)
