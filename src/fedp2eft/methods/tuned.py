"""``lora-tuned``, ``fedp2eft-tuned``: a method with its fine-tuning rate chosen per pool on
validation data, never on test.

Before personalising a pool, every candidate rate (``[tuned] lrs``, default
{1e-4, 3e-4, 1e-3, 3e-3}) personalises every client of the pool on its train split minus a held-out
``fraction`` (20 %, seeded per client) and is scored on those held-out rows (the task's primary
metric — accuracy, METEOR — pooled per language, then averaged over languages: the benchmark's own). The best rate (the
smaller one on a tie) then personalises each client on its whole train split, as the method itself
does, and the test split is predicted. Held-out rows come only from the clients' train splits: an unseen
client has its train data at personalisation time, so choosing on it uses nothing a user lacks.

``lora-tuned-client`` chooses per client instead: each client keeps the rate that scored best on its own
held-out rows. It is the ceiling of what a per-client step can get from a client's own validation data
(the learned per-client rates of ``fedp2eft-step`` and ``fedl2p`` aim at it without a sweep), at the same
cost as ``lora-tuned``; where it scores below ``lora-tuned``, a client's held-out rows are too few to tell
its rate apart from the pool's (issue 26).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from ..errors import UserError, require
from ..evaluation import LanguageTally, mean_over_languages
from .interface import ClientTask, PersonaliseConfig, client_base
from .registry import MethodSpec, register_moved_key, register_section


@dataclass(frozen=True)
class TunedConfig:
    """``[tuned]``: the rate sweep of every ``*-tuned`` method."""

    lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])  # candidate adapter rates
    fraction: float = 0.2  # share of each client's train split held out for validation

    def __post_init__(self) -> None:
        require(len(self.lrs) > 0 and all(x > 0 for x in self.lrs), "lrs", "needs at least one rate, all > 0")
        require(0 < self.fraction < 1, "fraction", "must be in (0, 1)")


register_section("tuned", TunedConfig)
register_moved_key("personalise.tune_lrs", "tuned.lrs")
register_moved_key("personalise.tune_fraction", "tuned.fraction")


def best_rate(scores: dict[float, float]) -> float:
    """The rate of the highest validation score; the smaller rate on a tie."""
    best = max(scores.values())
    return min(lr for lr, v in scores.items() if v == best)


@dataclass
class TunedMethod:
    inner: object  # a Method: its personalise() is run at each candidate rate
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    fraction: float = 0.2
    chosen: float | None = None
    validation: dict[str, float] = field(default_factory=dict)
    uses_budget: bool = True
    per_client: bool = False  # each client its own rate (``*-tuned-client``), else one per pool
    chosen_by_client: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.inner.name}-tuned" + ("-client" if self.per_client else "")

    @property
    def fine_tunings_per_client(self) -> int:
        """One per candidate rate on the held-out split, then the chosen rate's."""
        return len(self.lrs) + 1

    def prepare(self, base: nn.Module, tasks: list[ClientTask], budget: int, p: PersonaliseConfig,
                client_seed, advance=lambda: None) -> dict:
        """Choose the rate for this pool; ``client_seed(i)`` gives client i's seed; ``advance()`` after each
        client's fine-tuning at each candidate rate (progress)."""
        if budget is None or budget < 1:
            raise UserError(f"{self.name} needs a rank budget >= 1, got {budget}")
        scores, by_client = {}, {}
        for lr in self.lrs:
            tally = LanguageTally()
            for i, task in enumerate(tasks):
                if len(task.train) < 2:
                    continue  # nothing to hold out
                seed = client_seed(i)
                fit, val = task.train.split(self.fraction, seed)
                held = ClientTask(task.client_id, task.language, fit, val, task.problem)
                outputs = self.at_rate(lr).personalise(client_base(base, task.client_id), held, budget,
                                                       p.with_lr(lr), seed)
                languages, rows = held.score(outputs)
                tally.add_scores(languages, rows)
                own = LanguageTally()
                own.add_scores(languages, rows)
                by_client.setdefault(task.client_id, {})[lr] = mean_over_languages(own.per_language())
                advance()
            scores[lr] = mean_over_languages(tally.per_language())
        scores = {lr: v for lr, v in scores.items() if not math.isnan(v)}
        if not scores:
            raise UserError(f"{self.name}: no client has >= 2 training rows to hold out validation data")
        self.chosen = best_rate(scores)
        self.validation = {f"{lr:g}": v for lr, v in scores.items()}
        metric = tasks[0].problem.metric if tasks else "accuracy"
        if not self.per_client:
            return {"lr": self.chosen, f"validation_{metric}": self.validation}
        # each client its best rate on its own held-out rows (the pool's rate where it cannot hold any out;
        # the smaller rate on a tie, as for the pool)
        self.chosen_by_client = {cid: best_rate(own) for cid, own in by_client.items()}
        counts = {f"{lr:g}": sum(1 for c in self.chosen_by_client.values() if c == lr) for lr in self.lrs}
        return {"lr": self.chosen, f"validation_{metric}": self.validation, "per_client_lr":
                {cid: lr for cid, lr in sorted(self.chosen_by_client.items())}, "clients_per_lr": counts}

    def personalise(self, base: nn.Module, task: ClientTask, budget: int | None, p: PersonaliseConfig,
                    seed: int) -> list[int]:
        if self.chosen is None:
            raise UserError(f"{self.name}: its rate is chosen per pool first (prepare)")
        lr = self.chosen_by_client.get(task.client_id, self.chosen) if self.per_client else self.chosen
        return self.at_rate(lr).personalise(base, task, budget, p.with_lr(lr), seed)

    def at_rate(self, lr: float):
        """The inner method fine-tuning at ``lr``: one whose rate is its own setting (AdaLoRA's
        ``[adalora] lr``) gives a copy through ``with_rate``; the others take it from the recipe."""
        return self.inner.with_rate(lr) if hasattr(self.inner, "with_rate") else self.inner


def tuned_spec(inner: MethodSpec, per_client: bool = False) -> MethodSpec:
    """``<inner>-tuned``: ``inner`` with its rate chosen per pool (``[tuned] lrs``); ``per_client``:
    ``<inner>-tuned-client``, each client's rate chosen on its own held-out rows."""

    def build(cfg, resources: dict, seed: int) -> TunedMethod:
        return TunedMethod(inner.build(cfg, resources, seed), lrs=tuple(cfg.tuned.lrs), fraction=cfg.tuned.fraction,
                           per_client=per_client)

    where = "per client on its own" if per_client else "per pool on"
    return MethodSpec(f"{inner.name}-tuned" + ("-client" if per_client else ""), build, uses_budget=True,
                      section=inner.section, settings=inner.settings, stage=inner.stage, recorded=inner.recorded,
                      max_budget=inner.max_budget,
                      summary=f"{inner.name} with its rate chosen {where} held-out train rows ([tuned] lrs)")
