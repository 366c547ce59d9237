"""LoRA and "none" personalisation on tiny models: they train, merge exactly and leave the base alone."""

from __future__ import annotations

import copy

import torch
from peft import get_peft_model

from fedp2eft.data.records import Example
from fedp2eft.methods import ClientTask, PersonaliseConfig, get_method
from fedp2eft.methods.lora import lora_config
from fedp2eft.models import load_classifier
from fedp2eft.tasks import CLASSIFICATION
from fedp2eft.training import Recipe, linear_module_names

WORDS = {0: "football goal match team", 1: "election minister vote parliament"}


def toy_task(tok, n=24):
    rows = [Example(f"{WORDS[i % 2]} {i}", i % 2, "xx") for i in range(n)]
    return ClientTask("xx-seen-00", "xx", CLASSIFICATION.encode(tok, rows, 16), CLASSIFICATION.encode(tok, rows, 16), CLASSIFICATION)


def test_all_linear_targets_exclude_head():
    model, _ = load_classifier("tiny-bert", 2)
    names = linear_module_names(model)
    assert len(names) == 2 * 6 and not any(n.startswith("head") for n in names)


def test_lora_learns_and_leaves_base_untouched():
    torch.manual_seed(0)
    base, tok = load_classifier("tiny-bert", 2)
    before = copy.deepcopy(base.state_dict())
    task = toy_task(tok)
    settings = PersonaliseConfig(recipe=Recipe(epochs=20, batch_size=8, lr=5e-3, head_lr=5e-2))
    preds = get_method("lora").personalise(base, task, 2, settings, 0)
    acc = sum(int(p == y) for p, y in zip(preds, task.test.labels)) / len(preds)
    assert acc == 1.0
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    none_preds = get_method("none").personalise(base, task, None, settings, 0)
    assert len(none_preds) == len(task.test)


def test_merge_equals_unmerged_adapter():
    base, tok = load_classifier("tiny-bert", 3)
    model = get_peft_model(copy.deepcopy(base), lora_config(base, 4, problem=CLASSIFICATION))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    model.eval()
    enc = tok(["a b c", "d e"], padding=True, return_tensors="pt")
    with torch.no_grad():
        y1 = model(enc["input_ids"], enc["attention_mask"])
        merged = model.merge_and_unload()
        y2 = merged(enc["input_ids"], enc["attention_mask"])
        y0 = base(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(y0, y1)


def test_adalora_allocates_and_predicts():
    from fedp2eft.methods.adalora import adalora_schedule

    assert adalora_schedule(100, 10, 2) == (20, 2, 6)
    assert adalora_schedule(3, 32, 1) == (1, 0, 0)
    torch.manual_seed(0)
    base, tok = load_classifier("tiny-bert", 2)
    before = copy.deepcopy(base.state_dict())
    task = toy_task(tok, n=40)
    settings = PersonaliseConfig(recipe=Recipe(epochs=10, batch_size=8, lr=5e-3, head_lr=5e-2))
    preds = get_method("adalora").personalise(base, task, 2, settings, 0)
    acc = sum(int(p == y) for p, y in zip(preds, task.test.labels)) / len(preds)
    assert acc >= 0.9
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_adalora_state_survives_rank_allocation_for_reload_and_averaging():
    import warnings

    from peft import AdaLoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

    from fedp2eft.adapters.adalora_state import full_rank_state, unallocated_config

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    base, _ = load_classifier("tiny-bert", 3)
    x = torch.randint(5, 100, (4, 8))
    inputs = {"input_ids": x, "attention_mask": torch.ones_like(x)}

    def allocated_client(seed):
        torch.manual_seed(seed)
        cfg = AdaLoraConfig(init_r=3, target_r=1, tinit=0, tfinal=0, deltaT=1, total_step=4, lora_alpha=4,
                            target_modules=linear_module_names(base), modules_to_save=["head"])
        model = get_peft_model(copy.deepcopy(base), cfg)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(4):
            model(**inputs).square().sum().backward()
            opt.step()
            model.base_model.update_and_allocate(step)
            opt.zero_grad()
        return model.eval()

    a, b = allocated_client(1), allocated_client(2)
    truncated = get_peft_model_state_dict(a)
    assert any(k.endswith("lora_A") and v.shape[0] < 3 for k, v in truncated.items())  # peft truncates
    fresh = get_peft_model(copy.deepcopy(base), unallocated_config(a.peft_config["default"])).eval()
    assert not set_peft_model_state_dict(fresh, full_rank_state(a)).unexpected_keys
    with torch.no_grad():
        assert torch.allclose(fresh(**inputs), a(**inputs), atol=1e-6)
    sa, sb = full_rank_state(a), full_rank_state(b)
    assert sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
    mean = {k: (sa[k] + sb[k]) / 2 for k in sa}  # FedAvg of two clients with different rank patterns
    set_peft_model_state_dict(fresh, mean)
    e = "base_model.model.backbone.encoder.layer.0.attention.self.query.lora_E"
    got = fresh.get_submodule(e).default if hasattr(fresh.get_submodule(e), "default") else None
    assert got is not None and torch.allclose(got.detach(), mean[e])
