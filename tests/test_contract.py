"""One contract for every registered method and every registered federated stage, on real MasakhaNEWS
rows with a tiny model: a method returns one output per test row, leaves the base model untouched
and is deterministic under a seed; a stage resumed from its checkpoint ends where an uninterrupted
run does. A new method or stage is covered by registering it."""

from __future__ import annotations

import pytest
import torch

from fedp2eft.config import load_config
from fedp2eft.fl.engines import run_stage
from fedp2eft.methods import get_method, get_spec, method_names
from fedp2eft.methods.registry import federated_stages, get_stage, prior_key
from fedp2eft.setup.base_models import load_base
from fedp2eft.setup.federation import client_task, load_federation, stage_context, task_for
from fl_helpers import tiny_overrides

SMALL = {"base_model.kind": '"off-the-shelf"', "personalise.epochs": 1, "personalise.batch_size": 8,
         "tuned.lrs": "[1e-4, 1e-3]", "fedp2eft.r_init": 4, "fedp2eft.lora_alpha": 8,
         "fedp2eft.batch_size": 8, "fedp2eft.local_epochs": 1, "fedp2eft_paper.r_init": 4,
         "fedp2eft_paper.lora_alpha": 8, "fedp2eft_paper.batch_size": 8, "fedp2eft_paper.local_epochs": 1,
         "fedl2p.outer_steps": 1, "fedl2p.batch_pairs": 2, "pf2lora.steps": 2, "pf2lora.batch_size": 8}


@pytest.fixture(scope="module")
def setting(masakhanews_dir):
    cfg = load_config(None, tiny_overrides(masakhanews_dir, **SMALL))
    fed = load_federation(cfg)
    base, tok = load_base(cfg, "off-the-shelf", len(fed.label_names), seed=0)
    task = client_task(fed.pool("unseen")[0], tok, cfg.data.max_length, task_for(cfg))
    return cfg, base, task


def prior_state(cfg, base, stage) -> dict:
    """For a stage that ``needs`` another: that stage's initial state under its prefix (else nothing)."""
    if stage.needs is None:
        return {}
    needed = get_stage(stage.needs)
    init = needed.initial_state(base, needed.client_settings(cfg), stage_context(cfg, 0))
    return {prior_key(needed.name, k): v for k, v in init.items()}


def untrained_resources(cfg, base, spec, folder) -> dict:
    """The method's stage resource at its initial state (the contract is about personalisation)."""
    if spec.stage is None:
        return {}
    out = {}
    for budget in ([2] if spec.stage.per_budget else [None]):
        settings, ctx = spec.stage.client_settings(cfg), stage_context(cfg, 0, budget)
        state = {**spec.stage.initial_state(base, settings, ctx), **prior_state(cfg, base, spec.stage)}
        out[budget] = spec.stage.finalize(base, state, settings, folder, ctx)
    return out


@pytest.mark.parametrize("name", method_names())
def test_every_method_keeps_the_contract(name, setting, tmp_path):
    cfg, base, task = setting
    spec = get_spec(name)
    resources = untrained_resources(cfg, base, spec, tmp_path)
    budget = 2 if spec.uses_budget else None
    p = cfg.personalise
    before = {k: v.detach().clone() for k, v in base.state_dict().items()}

    def personalise(rng_state: int) -> list:
        torch.manual_seed(rng_state)  # whatever ran before: only the run's seed may matter
        method = get_method(name, cfg, resources, seed=5)
        assert method.name == name
        if hasattr(method, "prepare"):
            method.prepare(base, [task], budget, p, lambda i: 5)
        return method.personalise(base, task, budget, p, 5)

    first, second = personalise(1), personalise(2)
    assert len(first) == len(task.test)  # one output per test row
    assert first == second  # deterministic under the seed
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # base untouched
    assert len(task.problem.score(first, task.test)[task.problem.metric]) == len(task.test)


@pytest.mark.parametrize("name", list(federated_stages()))
def test_every_stage_resumed_equals_uninterrupted(name, masakhanews_dir, tmp_path):
    stage = federated_stages()[name]
    budget = 2 if stage.per_budget else None

    def cfg(rounds: int):
        return load_config(None, tiny_overrides(masakhanews_dir, **{**SMALL, f"{stage.section}.rounds": rounds,
                                                                   "federation.checkpoint_every": 1}))

    prior = prior_state(cfg(3), _base_and_settings(cfg(3), stage, budget)[0], stage) or None
    full = run_stage(cfg(3), stage, "off-the-shelf", 0, tmp_path / "full", budget, resume=False, prior=prior)
    run_stage(cfg(1), stage, "off-the-shelf", 0, tmp_path / "cut", budget, resume=False, prior=prior)
    resumed = run_stage(cfg(3), stage, "off-the-shelf", 0, tmp_path / "cut", budget, resume=True, prior=prior)
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full), name
    init = {**stage.initial_state(*_base_and_settings(cfg(3), stage, budget), stage_context(cfg(3), 0, budget)),
            **(prior or {})}
    assert full.keys() == init.keys()  # the global state keeps its keys
    assert any(not torch.equal(full[k], init[k].to(full[k].device)) for k in full)  # and moves


@pytest.mark.parametrize("name", list(federated_stages()))
def test_every_stage_applies_fedprox_to_what_it_shares(name, setting, tmp_path):
    """Under FedProx (a large μ) a client update of every stage ends nearer the global state it received
    than without, on the tensors the stage trains (a needed stage's frozen state moves in neither)."""
    from fedp2eft.methods.registry import StageContext

    cfg, base, task = setting
    cfg = load_config(None, tiny_overrides(cfg.data.path, **{**SMALL, "fedl2p.outer_steps": 3,
                                                             "fedl2p_paper.outer_steps": 3}))
    stage = federated_stages()[name]
    budget = 2 if stage.per_budget else None
    settings = stage.client_settings(cfg)
    state = {**stage.initial_state(base, settings, stage_context(cfg, 0, budget)), **prior_state(cfg, base, stage)}
    own = [k for k in state if not (stage.needs and k.startswith(prior_key(stage.needs, "")))]

    def distance(mu: float) -> float:
        ctx = StageContext(seed=3, budget=budget, client_state_dir=str(tmp_path / f"mu{mu}"), problem=task.problem,
                           proximal_mu=mu)
        new, _, _ = stage.client_update(base, dict(state), task, settings, ctx)
        return sum(float((new[k].double() - state[k].double()).pow(2).sum()) for k in own) ** 0.5

    free, pulled = distance(0.0), distance(1e4)
    assert 0 < pulled < free, (name, pulled, free)


def _base_and_settings(cfg, stage, budget):
    fed = load_federation(cfg)
    base, _ = load_base(cfg, "off-the-shelf", len(fed.label_names), seed=0)
    return base, stage.client_settings(cfg)


def test_a_new_method_is_one_module_one_registration_and_its_config(tmp_path, masakhanews_dir, capsys):
    """What a plug-in does: a settings dataclass (its section), a method class and a spec registered —
    then ``fedp2eft run`` accepts its section, validates it, runs it and records its settings."""
    import json
    from dataclasses import dataclass

    from fedp2eft.cli import main
    from fedp2eft.errors import require
    from fedp2eft.methods import MethodSpec, register_method
    from fedp2eft.methods.lora import LoRAMethod
    from fedp2eft.methods.registry import unregister_method

    @dataclass
    class WideLoRAConfig:
        """``[wide_lora]``"""

        rank_factor: int = 2  # LoRA of rank factor · r

        def __post_init__(self) -> None:
            require(self.rank_factor >= 1, "rank_factor", "must be >= 1")

    class WideLoRA:
        name, uses_budget = "wide-lora", True

        def __init__(self, factor: int):
            self.factor = factor

        def personalise(self, base, task, budget, p, seed):
            return LoRAMethod().personalise(base, task, budget * self.factor, p, seed)

    register_method(MethodSpec("wide-lora", lambda cfg, resources, seed: WideLoRA(cfg.wide_lora.rank_factor),
                               section="wide_lora", settings=WideLoRAConfig, recorded=True))
    try:
        sets = tiny_overrides(masakhanews_dir, **{**SMALL, "personalise.methods": '["wide-lora"]',
                                                  "personalise.pools": '["unseen"]', "wide_lora.rank_factor": 3})
        args = [x for s in sets for x in ("--set", s)]
        assert main(["run", "configs/quickstart.toml", "--out", str(tmp_path), *args]) == 0
        runs = json.loads((tmp_path / "results.json").read_text())["runs"]
        assert [(r["method"], r["settings"]) for r in runs] == [("wide-lora", {"rank_factor": 3})]
        capsys.readouterr()
        assert main(["run", "configs/quickstart.toml", "--out", str(tmp_path), *args,
                     "--set", "wide_lora.rank_factor=0"]) == 2
        assert "config key wide_lora.rank_factor: must be >= 1" in capsys.readouterr().err
    finally:
        unregister_method("wide-lora")
    with pytest.raises(Exception, match="unknown config section"):
        load_config(None, ["wide_lora.rank_factor=3"])
