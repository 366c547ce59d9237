"""The authors' recipe as settings (issue 10): fixed LoRA A, the head as an adapter, the BT-LoRA
baseline's stage 1, the PSG's regression, λ's dynamics on a wide module, and settings that travel."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from fedp2eft.adapters import fixed_a_rows, select_ranks
from fedp2eft.adapters.bt_lora import bt_modules
from fedp2eft.data.records import Example
from fedp2eft.methods import ClientTask, PersonaliseConfig, get_method
from fedp2eft.methods.fedp2eft import PSG, FedP2EFTMethod
from fedp2eft.methods.fedp2eft.bt_lora_client import BTLoRAClientMethod
from fedp2eft.methods.fedp2eft.training import BTPrior, BTSettings, pruned_model, stage1_model, train_lambdas
from fedp2eft.methods.lora import lora_model
from fedp2eft.models import load_classifier
from fedp2eft.models.classifier import SequenceClassifier
from fedp2eft.tasks import CLASSIFICATION
from fedp2eft.training import Recipe


def toy_task(tok, n=16):
    rows = [Example(f"word{i} " * (1 + i % 5), i % 3, "xx") for i in range(n)]
    return ClientTask("xx-seen-00", "xx", CLASSIFICATION.encode(tok, rows, 16), CLASSIFICATION.encode(tok, rows, 16), CLASSIFICATION)


def lora_a(model) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and isinstance(module.lora_A, nn.ModuleDict) and "default" in module.lora_A:
            out[name.removeprefix("base_model.model.")] = module.lora_A["default"].weight.detach().clone()
    return out


def test_fixed_a_rows_are_a_prefix_and_depend_on_module_and_seed():
    a32 = fixed_a_rows("backbone.x", 32, 24, seed=42)
    torch.testing.assert_close(fixed_a_rows("backbone.x", 2, 24, seed=42), a32[:2], rtol=0, atol=0)
    assert not torch.equal(fixed_a_rows("backbone.y", 2, 24, seed=42), a32[:2])
    assert not torch.equal(fixed_a_rows("backbone.x", 2, 24, seed=7), a32[:2])
    assert a32.abs().max() <= 1 / 24 ** 0.5  # peft's init range for A


def test_fixed_a_is_the_same_in_every_round_client_and_at_personalisation():
    base, _ = load_classifier("tiny-bert", 3)
    s = BTSettings(BTPrior(r_init=6, lora_alpha=12), Recipe(head="adapter", lora_a_seed=42))
    round1 = lora_a(stage1_model(base, 1e-4, s, 0, CLASSIFICATION))
    round2 = lora_a(stage1_model(base, 0.5, s, 99, CLASSIFICATION))  # other client/round seed
    assert round1.keys() == round2.keys() and "head" in round1
    assert all(torch.equal(round1[k], round2[k]) for k in round1)
    # LoRA at rank 2 (any seed) uses the first two rows of the same A
    lora = lora_a(lora_model(base, 2, Recipe(head="adapter", lora_a_seed=42), CLASSIFICATION))
    assert all(torch.equal(lora[k], round1[k][:2]) for k in lora)
    # the pruned BT-LoRA keeps exactly the rows of the ranks it kept
    torch.manual_seed(0)
    lam = {k: torch.rand(6) for k in round1}
    model = pruned_model(base, lam, 2, s, CLASSIFICATION)
    kept = select_ranks(lam, 2)
    pruned = lora_a(model)
    assert pruned.keys() == kept.keys()
    for k, ids in kept.items():
        torch.testing.assert_close(pruned[k], round1[k][ids], rtol=0, atol=0)
        lam_kept = bt_modules(model)[k].lora_lambda["default"].detach()
        torch.testing.assert_close(lam_kept, lam[k][ids])
    # without a seed, A differs between clients
    fresh1 = lora_a(lora_model(base, 2, Recipe(), CLASSIFICATION))
    fresh2 = lora_a(lora_model(base, 2, Recipe(), CLASSIFICATION))
    assert any(not torch.equal(fresh1[k], fresh2[k]) for k in fresh1)


def test_head_as_adapter_keeps_head_weights_frozen():
    torch.manual_seed(0)
    base, tok = load_classifier("tiny-bert", 3)
    task = toy_task(tok)
    head_before = base.head.weight.detach().clone()
    model = lora_model(base, 2, Recipe(head="adapter"), CLASSIFICATION)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(n.startswith("base_model.model.head.lora_") for n in trainable)
    preds = get_method("lora").personalise(
        base, task, 2, PersonaliseConfig(recipe=Recipe(head="adapter", lr=1e-2, max_grad_norm=1.0)), 0)
    assert len(preds) == len(task.test)
    assert torch.equal(base.head.weight, head_before)  # the base model is never modified


def test_bt_lora_baseline_honours_its_settings_and_keeps_lambda_positive(monkeypatch):
    import fedp2eft.methods.fedp2eft.training as bt_training

    torch.manual_seed(0)
    base, tok = load_classifier("tiny-bert", 3)
    task = toy_task(tok, n=16)
    calls = []
    real = bt_training.train_model

    def recording(model, groups, data, epochs, batch_size, seed, weight_decay=0.0, **kw):
        calls.append({"epochs": epochs, "batch_size": batch_size, "weight_decay": weight_decay,
                      "max_grad_norm": kw.get("max_grad_norm", 0.0)})
        return real(model, groups, data, epochs, batch_size, seed, weight_decay, **kw)

    monkeypatch.setattr(bt_training, "train_model", recording)
    bt = BTSettings(BTPrior(r_init=4, lora_alpha=8), Recipe(epochs=3, batch_size=4))  # stage 1: 3 epochs of 4 batches
    method = BTLoRAClientMethod(bt)
    settings = PersonaliseConfig(recipe=Recipe(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.05, max_grad_norm=1.0))
    method.personalise(base, task, 2, settings, 0)
    stage1, finetune = calls
    assert (stage1["epochs"], stage1["batch_size"]) == (3, 4)
    assert finetune == {"epochs": 1, "batch_size": 8, "weight_decay": 0.05, "max_grad_norm": 1.0}
    (lam,) = method._lambdas.values()
    assert all(bool((v >= 1e-4).all()) for v in lam.values())  # clamped: never negative


def test_fedp2eft_personalisation_honours_weight_decay_and_clipping(monkeypatch):
    import fedp2eft.methods.fedp2eft.training as bt_training
    from fedp2eft.methods.fedp2eft import new_psg

    base, tok = load_classifier("tiny-bert", 3)
    seen = []
    real = bt_training.train_model
    monkeypatch.setattr(bt_training, "train_model", lambda *a, **kw: seen.append((a[6], kw)) or real(*a, **kw))
    psg = new_psg(base, 4, head="adapter", psg_init=1.0)
    method = FedP2EFTMethod(psg, BTSettings(BTPrior(r_init=4, lora_alpha=8)))
    method.personalise(base, toy_task(tok), 2,
                       PersonaliseConfig(recipe=Recipe(weight_decay=0.1, max_grad_norm=0.5, head="adapter")), 0)
    ((wd, kw),) = seen
    assert wd == 0.1 and kw["max_grad_norm"] == 0.5


class _WideBackbone(nn.Module):
    """Embedding → 16 → 64 (4× wider than every other layer) → 16; a BERT-like output object."""

    def __init__(self, vocab=300, d=16):
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=d)
        self.emb = nn.Embedding(vocab, d)
        self.a = nn.Linear(d, d)
        self.wide = nn.Linear(d, 4 * d)
        self.c = nn.Linear(4 * d, d)
        self.d = nn.Linear(d, d)

    def forward(self, input_ids, attention_mask, **_):
        h = torch.relu(self.a(self.emb(input_ids)))
        h = torch.relu(self.c(torch.relu(self.wide(h))))
        return types.SimpleNamespace(last_hidden_state=self.d(h))


def _wide_toy_lambdas():
    """Stage 1 (40 epochs of 32 random rows) on the toy with one 4x wider module: (base, λ by module)."""
    from fedp2eft.training.batches import EncodedData

    torch.manual_seed(0)
    base = SequenceClassifier(_WideBackbone(), num_labels=3)
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, 300, (12,), generator=g).tolist() for _ in range(32)]
    data = EncodedData(ids, [i % 3 for i in range(32)], pad_id=0)
    s = BTSettings(BTPrior(r_init=4, lora_alpha=8, lambda_lr=0.01), Recipe(epochs=40, batch_size=8, lr=1e-3,
                                                                         lora_a_seed=42))
    lam, _ = train_lambdas(base, data, 1e-4, s, 0, CLASSIFICATION)
    return base, lam


def test_stage1_ranks_the_wide_module_first():
    """λ's fixed point grows like √‖B_i‖₁ and ‖B_i‖₁ with the module's output width (method-facts,
    "λ dynamics"): with one adapted module 4× wider, stage 1 gives it the largest λ."""
    _, lam = _wide_toy_lambdas()
    means = {k.split(".")[-1]: float(v.mean()) for k, v in lam.items()}
    assert max(means, key=means.get) == "wide", means
    assert all(means["wide"] > v for k, v in means.items() if k != "wide")


def test_psg_fits_targets_that_differ_by_module_and_by_client():
    """Stage 2 over federated rounds (FedAvg of two clients' regressions) learns a λ that differs
    by module and by client, in a few rounds at a regression rate large enough to follow."""
    from fedp2eft.methods.fedp2eft import regress_psg

    torch.manual_seed(0)
    feats = {"a": torch.tensor([1.0, 0.5, -0.3, 0.8]), "b": torch.tensor([0.2, 1.5, 0.4, -0.6])}
    targets = {"a": torch.tensor([[2.0, 1.5], [0.5, 0.2], [1.0, 0.8]]),
               "b": torch.tensor([[0.6, 0.4], [1.8, 1.2], [0.3, 0.1]])}
    state = PSG(4, 3, 2, init_bias=1.0).state_dict()
    for _ in range(30):
        new = []
        for c in ("a", "b"):
            psg = PSG(4, 3, 2)
            psg.load_state_dict(state)
            regress_psg(psg, feats[c], targets[c], steps=10, lr=1e-2, loss="sum")
            new.append(psg.state_dict())
        state = {k: (new[0][k] + new[1][k]) / 2 for k in state}
    psg = PSG(4, 3, 2)
    psg.load_state_dict(state)
    with torch.no_grad():
        for c in ("a", "b"):
            out = psg(feats[c])
            assert (out - targets[c]).abs().max() < 0.15, (c, out, targets[c])
            # the order of modules (by mean λ) is the client's own
            assert torch.equal(out.mean(1).argsort(), targets[c].mean(1).argsort())


@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_regression_loss_reduction_is_a_setting(loss):
    from fedp2eft.methods.fedp2eft import regress_psg

    psg = PSG(4, 2, 2)
    err = regress_psg(psg, torch.ones(4), torch.full((2, 2), 0.5), steps=3, lr=1e-3, loss=loss)
    assert 0 < err < 0.5


def test_lambda_trajectory_from_per_client_round_metrics(tmp_path):
    import json

    from fedp2eft.methods.fedp2eft.report import write_lambda_trajectory
    from fedp2eft.psg.module_types import lambda_statistics, module_type

    names = ["backbone.encoder.layer.0.attention.self.query", "backbone.encoder.layer.0.intermediate.dense",
             "backbone.encoder.layer.0.output.dense", "backbone.encoder.layer.0.attention.output.dense", "head"]
    assert [module_type(n) for n in names] == ["query", "ffn_up", "ffn_down", "attn_out", "classifier"]
    lines = []
    for rnd in (1, 2, 3):
        clients = {}
        for c, scale in (("a", 1.0), ("b", 2.0)):
            lam = torch.full((5, 4), 0.1 * rnd * scale)
            lam[1] *= 1.5  # FFN up above the rest
            clients[c] = lambda_statistics(names, lam)
        lines.append(json.dumps({"round": rnd, "sampled": ["a", "b"], "clients": clients}))
    (tmp_path / "rounds.jsonl").write_text("\n".join(lines) + "\n")
    traj = write_lambda_trajectory(tmp_path)
    assert (tmp_path / "lambda_trajectory.png").is_file()
    assert traj["round"] == [1, 2, 3]
    ffn = traj["types"]["ffn_up"]
    query = traj["types"]["query"]
    assert all(ffn[r] == pytest.approx(1.5 * query[r]) for r in query)
    assert traj["sd_over_ranks"] == [0.0, 0.0, 0.0]  # every rank of a module alike here
    assert all(v > 0 for v in traj["sd_over_modules"]) and all(v > 0 for v in traj["sd_over_clients"])


def two_toy_clients() -> list[ClientTask]:
    """Two clients (languages aa, bb) of 10 train and 6 test rows, 3 labels, tiny-bert's tokenizer."""
    _, tok = load_classifier("tiny-bert", 3)
    tasks = []
    for k, lang in enumerate(["aa", "bb"]):
        train = [Example(f"train{k} {i}", i % 3, lang) for i in range(10)]
        test = [Example(f"test{k} {i}", i % 3, lang) for i in range(6)]
        tasks.append(ClientTask(f"{lang}-seen-00", lang, CLASSIFICATION.encode(tok, train, 16),
                                CLASSIFICATION.encode(tok, test, 16), CLASSIFICATION))
    return tasks


def test_tuned_method_chooses_the_rate_on_held_out_train_rows_never_test():
    from fedp2eft.methods.tuned import TunedMethod
    from fedp2eft.pipeline import personalise_pool

    tasks = two_toy_clients()
    test_ids = {tuple(ids) for t in tasks for ids in t.test.input_ids}

    class Inner:
        name, uses_budget, calls = "fake", True, []

        def personalise(self, base, task, budget, p, seed):
            self.calls.append((p.recipe.lr, len(task.train), len(task.test)))
            assert not {tuple(ids) for ids in task.train.input_ids} & test_ids  # test never trains
            if len(task.test) != 6:  # a validation pass: its rows are train rows
                assert not {tuple(ids) for ids in task.test.input_ids} & test_ids
            return list(task.test.labels) if p.recipe.lr == 3e-4 else [(y + 1) % 3 for y in task.test.labels]

    method = TunedMethod(Inner(), lrs=(1e-4, 3e-4, 1e-3))
    assert method.name == "fake-tuned"
    selection, ticks = {}, []
    per_language = personalise_pool(method, None, tasks, 2, PersonaliseConfig(), 0, lambda: ticks.append(1),
                                    selection=selection).per_language()
    assert selection["lr"] == 3e-4 and selection["validation_accuracy"]["0.0003"] == 1.0
    # progress counts every fine-tuning: 3 candidate rates x 2 clients, then the 2 clients at the chosen rate
    assert len(ticks) == method.fine_tunings_per_client * len(tasks) == 8
    assert all(v["value"] == 1.0 for v in per_language.values())
    final = Inner.calls[-2:]
    assert final == [(3e-4, 10, 6), (3e-4, 10, 6)]  # whole train split, at the chosen rate
    assert {c[1] for c in Inner.calls[:-2]} == {8}  # 20 % of 10 rows held out while choosing


def test_tuned_client_gives_each_client_the_rate_its_own_held_out_rows_chose():
    """lora-tuned-client (issue 26): the ceiling of a per-client step from a client's own validation rows."""
    from fedp2eft.methods.tuned import TunedMethod
    from fedp2eft.pipeline import personalise_pool

    tasks = two_toy_clients()
    best = {"aa-seen-00": 3e-4, "bb-seen-00": 1e-3}
    calls = []

    class Inner:
        name, uses_budget = "fake", True

        def personalise(self, base, task, budget, p, seed):
            calls.append((task.client_id, p.recipe.lr, len(task.train)))
            right = p.recipe.lr == best[task.client_id]
            return list(task.test.labels) if right else [(y + 1) % 3 for y in task.test.labels]

    method = TunedMethod(Inner(), lrs=(1e-4, 3e-4, 1e-3), per_client=True)
    assert method.name == "fake-tuned-client"
    selection = {}
    tally = personalise_pool(method, None, tasks, 2, PersonaliseConfig(), 0, selection=selection)
    assert selection["per_client_lr"] == best and selection["clients_per_lr"] == {"0.0001": 0, "0.0003": 1, "0.001": 1}
    assert calls[-2:] == [("aa-seen-00", 3e-4, 10), ("bb-seen-00", 1e-3, 10)]  # each at its own rate, whole split
    assert all(v["value"] == 1.0 for v in tally.per_language().values())
    pooled = TunedMethod(Inner(), lrs=(1e-4, 3e-4, 1e-3))
    personalise_pool(pooled, None, tasks, 2, PersonaliseConfig(), 0, selection={})
    assert calls[-2:] == [("aa-seen-00", 3e-4, 10), ("bb-seen-00", 3e-4, 10)]  # one rate for the pool (tie: smaller)


def test_a_method_whose_rate_is_its_own_setting_is_swept_through_with_rate(monkeypatch):
    """adalora-tuned: AdaLoRA's rate is [adalora] lr, not the recipe's, so the sweep builds a copy per rate;
    bt-lora-tuned: a client's λ learned on the sweep's 80 % split is not reused for its whole train split."""
    import fedp2eft.methods.fedp2eft.bt_lora_client as bt_module
    from fedp2eft.config import load_config
    from fedp2eft.methods.adalora import AdaLoRAMethod
    from fedp2eft.methods.tuned import TunedMethod

    tuned = TunedMethod(AdaLoRAMethod(lr=1e-3, alpha=8), lrs=(1e-4, 3e-3))
    swept = tuned.at_rate(3e-3)
    assert isinstance(swept, AdaLoRAMethod) and swept.lr == 3e-3 and swept.alpha == 8 and tuned.inner.lr == 1e-3
    cfg = load_config(None, ["tuned.lrs=[1e-4, 3e-3]"])
    assert get_method("adalora-tuned", cfg, None, 0).name == "adalora-tuned"
    assert get_method("bt-lora-tuned", cfg, None, 0).at_rate(1e-4).__class__ is BTLoRAClientMethod

    calls = []
    monkeypatch.setattr(bt_module, "train_lambdas",
                        lambda base, rows, *a, **k: (calls.append(len(rows)) or ({"x": torch.ones(1)},)))
    _, tok = load_classifier("tiny-bert", 3)
    rows = CLASSIFICATION.encode(tok, [Example(f"t {i}", i % 3, "aa") for i in range(10)], 16)
    fit, _ = rows.split(0.2, 0)
    bt = BTLoRAClientMethod()
    for train in (fit, rows, rows):
        bt.client_lambdas(None, ClientTask("aa-seen-00", "aa", train, rows, CLASSIFICATION), 0)
    assert calls == [8, 10]  # learned again on the whole split, then reused


def test_pf2lora_with_the_head_as_adapter_keeps_level2_and_head_weights_home(tmp_path):
    from fedp2eft.methods.pf2lora import (
        PF2LoRAMethod,
        PF2LoRASettings,
        PF2LoRATraining,
        initial_shared_state,
        pf2lora_client_update,
    )

    torch.manual_seed(0)
    base, tok = load_classifier("tiny-bert", 3)
    s = PF2LoRASettings(PF2LoRATraining(steps=2, batch_size=8, lr=1e-2, lower_lr=0.1), head="adapter")
    state = initial_shared_state(base, s, 2, 0)
    assert "head.lora_A" in state and "head.weight" not in state
    assert not any("local_" in k for k in state)  # level 2 never travels
    head_before = base.head.weight.detach().clone()
    new, n, _ = pf2lora_client_update(base, state, toy_task(tok), s, 2, 0, tmp_path)
    assert new.keys() == state.keys() and n == 16
    assert not torch.equal(new["head.lora_B"], state["head.lora_B"])  # the head's adapter trained
    assert torch.equal(base.head.weight, head_before)
    assert any(tmp_path.iterdir())  # the client's level 2 stayed in its own folder
    preds = PF2LoRAMethod({2: (new, str(tmp_path))}, s.training).personalise(
        base, toy_task(tok), 2, PersonaliseConfig(recipe=Recipe(head="adapter", epochs=1, batch_size=8)), 0)
    assert len(preds) == 16


def test_width_free_selection_ranks_a_narrow_module_first_where_plain_lambda_picks_the_wide_one():
    """Issue 26, item 4: on the toy whose stage 1 ranks the 4x wider module first (above), the ranks of
    largest λ·√(d̄/d_out) go to a narrow module: width is out of the selection, λ's own order within a
    width is kept."""
    from fedp2eft.methods.fedp2eft.training import module_widths, width_free_scores

    base, lam = _wide_toy_lambdas()
    widths = module_widths(base, list(lam))
    assert widths["backbone.wide"] == 64 and widths["backbone.a"] == 16
    plain = select_ranks(lam, 1)
    free = select_ranks(width_free_scores(lam, widths), 1)
    first = lambda index: max(index, key=lambda n: len(index[n]))  # noqa: E731
    assert first(plain) == "backbone.wide"
    assert first(free) != "backbone.wide" and widths[first(free)] == 16
    # equal widths: the selection is λ's own
    same = {n: v for n, v in lam.items() if widths[n] == 16}
    assert select_ranks(width_free_scores(same, {n: 16 for n in same}), 1).keys() == select_ranks(same, 1).keys()
