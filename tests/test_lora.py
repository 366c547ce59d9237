"""LoRA and "none" personalisation on tiny models: they train, merge exactly and leave the base alone."""

from __future__ import annotations

import copy

import torch
from peft import get_peft_model

from fedp2eft.data.records import Example
from fedp2eft.methods import ClientTask, TrainSettings, get_method
from fedp2eft.methods.batches import encode
from fedp2eft.methods.lora import lora_config
from fedp2eft.methods.training import linear_module_names
from fedp2eft.models import load_classifier

WORDS = {0: "football goal match team", 1: "election minister vote parliament"}


def toy_task(tok, n=24):
    rows = [Example(f"{WORDS[i % 2]} {i}", i % 2, "xx") for i in range(n)]
    return ClientTask("xx-seen-00", "xx", encode(tok, rows, 16), encode(tok, rows, 16))


def test_all_linear_targets_exclude_head():
    model, _ = load_classifier("tiny-bert", 2)
    names = linear_module_names(model)
    assert len(names) == 2 * 6 and not any(n.startswith("head") for n in names)


def test_lora_learns_and_leaves_base_untouched():
    torch.manual_seed(0)
    base, tok = load_classifier("tiny-bert", 2)
    before = copy.deepcopy(base.state_dict())
    task = toy_task(tok)
    settings = TrainSettings(epochs=20, batch_size=8, lr=5e-3, head_lr=5e-2)
    preds = get_method("lora").personalise(base, task, 2, settings)
    acc = sum(int(p == y) for p, y in zip(preds, task.test.labels)) / len(preds)
    assert acc == 1.0
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    none_preds = get_method("none").personalise(base, task, None, settings)
    assert len(none_preds) == len(task.test)


def test_merge_equals_unmerged_adapter():
    base, tok = load_classifier("tiny-bert", 3)
    model = get_peft_model(copy.deepcopy(base), lora_config(base, 4))
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
    settings = TrainSettings(epochs=10, batch_size=8, lr=5e-3, head_lr=5e-2)
    preds = get_method("adalora").personalise(base, task, 2, settings)
    acc = sum(int(p == y) for p, y in zip(preds, task.test.labels)) / len(preds)
    assert acc >= 0.9
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
