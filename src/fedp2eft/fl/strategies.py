"""Flower's strategies as every stage's server rule, the screen each update passes first, and the
strategies' own state in the stage's checkpoint.

The arithmetic is Flower's (``flwr.serverapp.strategy``: ``aggregate_train``). What the project's round
loop needs that Flower's ``Strategy.start`` would otherwise give, kept thin here:

- **Sampling stays the loop's** (an RNG keyed by seed and round, so a resumed stage samples exactly as an
  uninterrupted one). ``configure_train`` is still called every round, on the round's global arrays and
  a grid that offers only the sampled nodes, because that is where a strategy keeps the round's arrays
  (FedAdam/FedYogi/FedAdagrad's ``current_arrays``, FedAvgM's) and adds its client config (FedProx's
  ``proximal-mu``, which every stage's client update applies: ``training.proximal``); its node sampling is discarded, and Python's RNG, which it draws from, is restored.
- **Server state is checkpointed** (FedOpt's moments ``m_t``/``v_t``, FedAvgM's momentum): a resumed
  stage aggregates bitwise as an uninterrupted one.
- **A stage that starts from another's final state** (``FederatedStage.needs``) sends that state with its
  own but never changes it: those keys are left out of the aggregation and kept as the server sent them.
- **Each update is screened** before any strategy sees it: non-finite values, or a norm of (update −
  global) above ``max_update_norm_ratio`` × the median of the round's other updates, refuse it; the loop
  counts it as a failed client, named with the reason.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from ..config import Privacy
from ..errors import UserError
from .privacy import with_privacy
from .records import array_tensor, from_arrays

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad, "fedavgm": FedAvgM,
    "fedmedian": FedMedian, "fedtrimmedavg": FedTrimmedAvg, "krum": Krum,
}
# the loop's, not a strategy parameter: sampling (``[federation]`` fraction, min_clients), record keys, metrics
_LOOP_OWNED = {"fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes", "min_available_nodes",
               "weighted_by_key", "arrayrecord_key", "configrecord_key", "train_metrics_aggr_fn",
               "evaluate_metrics_aggr_fn"}
_STATE_ATTRS = ("m_t", "v_t", "momentum_vector")  # the server state a strategy carries between rounds


@dataclass(frozen=True)
class StrategyChoice:
    """One stage's server rule: a Flower strategy (``STRATEGIES``), its own parameters, and the screen."""

    name: str = "fedavg"
    args: tuple[tuple[str, float | int | bool], ...] = ()
    max_update_norm_ratio: float = 1000.0


def strategy_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The parameters a user may set for strategy ``name``: its constructor's, less what the loop owns."""
    params = inspect.signature(STRATEGIES[name].__init__).parameters
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {k: p for k, p in params.items() if k != "self" and k not in _LOOP_OWNED and p.kind in kinds}


def check_choice(choice: StrategyChoice, where: str) -> None:
    """A one-line error naming ``where`` (the config key) for an unknown strategy or parameter."""
    if choice.name not in STRATEGIES:
        raise UserError(f"config key {where}: unknown strategy {choice.name!r}; strategies are {sorted(STRATEGIES)}")
    allowed = strategy_parameters(choice.name)
    for key, value in choice.args:
        if key not in allowed:
            raise UserError(f"config key {where}: strategy {choice.name!r} has no parameter {key!r}; "
                            f"its parameters are {sorted(allowed)}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"config key {where}: parameter {key!r} must be a number, got {value!r}")


def make_strategy(choice: StrategyChoice, privacy: Privacy | None = None, sample_size: int = 0) -> Strategy:
    """The Flower strategy of ``choice``; under differential privacy wrapped in Flower's DP wrapper for
    ``sample_size`` clients a round (``fl.privacy``)."""
    check_choice(choice, "federation.strategy")
    strategy = STRATEGIES[choice.name](**dict(choice.args), fraction_train=1.0, min_train_nodes=1,
                                       min_available_nodes=1)
    if privacy is not None and privacy.enabled:
        strategy = with_privacy(strategy, choice.name, privacy, sample_size)
    return strategy


class _SampledGrid:
    """The grid ``configure_train`` sees: only the nodes the loop already sampled."""

    def __init__(self, nodes: list[int]):
        self._nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)


def begin_round(strategy: Strategy, round_: int, arrays: ArrayRecord, nodes: list[int]) -> dict:
    """Let the strategy see the round's global ``arrays`` (its ``configure_train``); returns the config
    entries it adds for the clients (e.g. FedProx's ``proximal-mu``), without its ``server-round``."""
    saved = random.getstate()
    try:
        messages = list(strategy.configure_train(round_, arrays, ConfigRecord(), _SampledGrid(nodes)))
    finally:
        random.setstate(saved)
    if not messages:
        return {}
    config = messages[0].content.config_records["config"]
    return {k: v for k, v in config.items() if k != "server-round"}


def update_norms(global_arrays: ArrayRecord, replies: list[Message], keys: list[str]) -> list[float | str]:
    """Each reply's ‖update − global‖₂ over ``keys`` (summed in float64), or why it has none: one difference
    per tensor in its own dtype (torch's threads), both read in place from the messages' bytes
    (``records.array_tensor``); a NaN or Inf anywhere makes the sum non-finite, so no separate check."""
    norms: list[float | str] = [0.0] * len(replies)
    for key in keys:
        g_t = array_tensor(global_arrays[key], copy=False)
        shape = tuple(g_t.shape)
        g_t = g_t.reshape(-1)
        g_t = g_t if g_t.is_floating_point() else g_t.double()  # integer or boolean buffers
        for i, r in enumerate(replies):
            if isinstance(norms[i], str):
                continue
            mine = r.content.array_records["arrays"]
            if key not in mine or tuple(mine[key].shape) != shape:
                norms[i] = f"its update does not have the global state's tensor {key!r} {list(shape)}"
                continue
            d = array_tensor(mine[key], copy=False).reshape(-1).to(g_t.dtype) - g_t  # views of the messages' bytes
            square = float(torch.linalg.vector_norm(d, dtype=torch.float64)) ** 2
            norms[i] = norms[i] + square if np.isfinite(square) else "its update is not finite (NaN or Inf)"
    return [n if isinstance(n, str) else float(np.sqrt(n)) for n in norms]


def screen(global_arrays: ArrayRecord, replies: list[Message], keys: list[str], ratio: float
           ) -> tuple[dict[int, str], list[float | str]]:
    """``({reply index: reason}, norms)``: the updates to refuse — not finite (or not the global state's
    shape), or (``ratio`` > 0) with a norm above ``ratio`` × the median norm of the round's other finite
    updates (no reference, no refusal, when there is none) — and every reply's update norm."""
    norms = update_norms(global_arrays, replies, keys)
    refused = {i: f"refused: {n}" for i, n in enumerate(norms) if isinstance(n, str)}
    finite = [i for i in range(len(norms)) if i not in refused]
    for i in finite if ratio > 0 else []:
        others = [norms[j] for j in finite if j != i]
        ref = float(np.median(others)) if others else 0.0
        if ref > 0 and norms[i] > ratio * ref:
            refused[i] = (f"refused: update norm {norms[i]:.3g} exceeds {ratio:g} x the median {ref:.3g} "
                          "of the round's other updates")
    return refused, norms


def aggregate(strategy: Strategy, round_: int, replies: list[Message], trained: ArrayRecord,
              frozen: ArrayRecord | None = None, uniform: bool = False
              ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The strategy's aggregate of ``replies`` over the ``trained`` keys (in their order: strategies that
    keep state by position, FedAvgM, see the same order every round), with ``frozen`` (a needed stage's
    arrays, as the server sent them) left out of the aggregation and put back unchanged. ``uniform``: every
    update weighs 1 (differential privacy), not its client's number of examples."""
    replies = [_only(r, list(trained.keys()), uniform) for r in replies]
    arrays, metrics = strategy.aggregate_train(round_, replies)
    if arrays is None:
        raise UserError(f"round {round_}: the strategy returned no aggregate")
    state = from_arrays(frozen) if frozen is not None and len(frozen) else {}
    return state | from_arrays(arrays), {k: float(v) for k, v in (metrics or {}).items()}


def _only(reply: Message, keys: list[str], uniform: bool = False) -> Message:
    """The reply with the arrays of ``keys`` only, in that order (the same Array objects: no copy);
    ``uniform``: its weight (``num-examples``) set to 1."""
    arrays = reply.content.array_records["arrays"]
    metrics = {name: MetricRecord({**rec, "num-examples": 1}) if uniform else rec
               for name, rec in reply.content.metric_records.items()}
    content = RecordDict({"arrays": ArrayRecord({k: arrays[k] for k in keys}), **metrics})
    return Message(content=content, dst_node_id=reply.metadata.src_node_id, message_type="train")


def trainable(arrays: ArrayRecord, frozen_prefix: str) -> tuple[ArrayRecord, ArrayRecord]:
    """``(what the stage trains, what it keeps)``: keys under ``frozen_prefix`` are kept ("" = none). The
    trained keys are sorted, so the order is the same every round and after a resume."""
    train = ArrayRecord({k: arrays[k] for k in sorted(arrays.keys())
                         if not (frozen_prefix and k.startswith(frozen_prefix))})
    if not frozen_prefix:
        return train, ArrayRecord()
    keep = ArrayRecord({k: v for k, v in arrays.items() if k.startswith(frozen_prefix)})
    return train, keep


def _chain(strategy: Strategy) -> list[Strategy]:
    """The strategy and those it wraps (a DP wrapper's ``strategy``)."""
    out = [strategy]
    while isinstance(getattr(out[-1], "strategy", None), Strategy):
        out.append(out[-1].strategy)
    return out


def strategy_meta(strategy: Strategy) -> dict:
    """The strategy's scalar server state: adaptive clipping's current clipping norm."""
    return {"clipping_norm": float(strategy.clipping_norm)} if hasattr(strategy, "clip_norm_lr") else {}


def restore_strategy_meta(strategy: Strategy, meta: dict) -> None:
    if "clipping_norm" in meta:
        strategy.clipping_norm = float(meta["clipping_norm"])


def strategy_state(strategy: Strategy) -> dict[str, torch.Tensor]:
    """The server state the strategy (or the one it wraps) carries between rounds, as tensors
    (``<attr>/<key or index>``)."""
    out: dict[str, torch.Tensor] = {}
    strategy = _chain(strategy)[-1]
    for attr in _STATE_ATTRS:
        value = getattr(strategy, attr, None)
        if isinstance(value, dict):
            out |= {f"{attr}/{k}": torch.from_numpy(np.array(v)) for k, v in value.items()}
        elif isinstance(value, list):
            out |= {f"{attr}/{i:06d}": torch.from_numpy(np.array(v)) for i, v in enumerate(value)}
    return out


def restore_strategy_state(strategy: Strategy, tensors: dict[str, torch.Tensor]) -> None:
    """Put ``strategy_state``'s tensors back into a fresh strategy of the same kind."""
    strategy = _chain(strategy)[-1]
    for attr in _STATE_ATTRS:
        mine = {k.split("/", 1)[1]: v.numpy() for k, v in tensors.items() if k.split("/", 1)[0] == attr}
        if not mine:
            continue
        if attr == "momentum_vector":
            setattr(strategy, attr, [mine[k] for k in sorted(mine)])
        else:
            setattr(strategy, attr, dict(mine))
