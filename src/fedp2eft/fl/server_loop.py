"""The server's round loop, one for every stage and engine.

Each round: sample ``max(min_clients, round(fraction * |seen|))`` seen clients with an RNG keyed
by (seed, round) — so a resumed run samples exactly as an uninterrupted one — send them the
global arrays, drop every client whose reply is an error or that missed the time limit, refuse every
update that is not finite or is an outlier (``fl.strategies.screen``), stop with an error if the failed
fraction exceeds ``max_failure_fraction``, and aggregate the rest with the stage's Flower strategy
(``fl.strategies``; FedAvg weighted by ``num-examples`` unless configured). Failed clients are named in
``rounds.jsonl`` with the reason. Checkpoints (with the strategy's server state) every
``checkpoint_every`` rounds; per-round metrics as JSON lines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, RecordDict

from ..atomic import save_tensors, write_json
from ..config import Privacy, RoundSettings, SecureAggregation
from ..errors import UserError
from ..memory import ROUND_TRIM_BYTES, trim_freed_memory
from ..progress import quiet
from ..setup.jobs import Job
from .checkpoint import load_checkpoint, restore_rng, save_checkpoint
from .privacy import (
    check_budget,
    client_config,
    clip_reply,
    new_accountant,
    round_event,
    seeded_noise,
    spent,
    zero_update,
)
from .records import job_config, to_arrays
from .secure_aggregation import check_combination, pseudo_reply, secure_mean
from .strategies import (
    StrategyChoice,
    aggregate,
    begin_round,
    make_strategy,
    restore_strategy_meta,
    restore_strategy_state,
    screen,
    strategy_meta,
    strategy_state,
    trainable,
)


@dataclass(frozen=True)
class LoopSettings:
    """One stage's server loop: its rounds, the federation's round settings (``[federation]``; evaluation
    off for a stage without federated evaluation), the stage's seed, its snapshots, its server rule and the
    keys it keeps frozen (a needed stage's state, ``"<needs>."``; "" = none)."""

    rounds: int
    round: RoundSettings = field(default_factory=RoundSettings)
    seed: int = 0
    snapshot_every: int = 0  # > 0: keep the global state of every k-th round in <out>/snapshots/
    strategy: StrategyChoice = field(default_factory=StrategyChoice)
    frozen_prefix: str = ""
    privacy: Privacy | None = None  # differential privacy (``fl.privacy``); None or dp = "off": none
    secure: SecureAggregation | None = None  # SecAgg+ (``fl.secure_aggregation``); None or off: none
    name: str = "stage"  # what errors call it


def wait_for_nodes(grid, expected: int, minimum: int, timeout_s: float = 300.0, settle_s: float = 10.0) -> list[int]:
    """Nodes connect asynchronously (Simulation and Deployment Engines): wait for ``expected``
    of them, or for at least ``minimum`` once the count has not changed for ``settle_s``."""
    start = last_change = time.monotonic()
    nodes: list[int] = []
    while True:
        now_nodes = sorted(grid.get_node_ids())
        if len(now_nodes) != len(nodes):
            nodes, last_change = now_nodes, time.monotonic()
        if len(nodes) >= expected or (len(nodes) >= minimum and time.monotonic() - last_change > settle_s):
            return nodes
        if time.monotonic() - start > timeout_s:
            raise UserError(f"only {len(nodes)} of {expected} nodes connected within {timeout_s:.0f} s")
        time.sleep(0.2)


def discover(grid, job: Job, expected: int = 1, minimum: int = 1) -> dict[int, tuple[str, str]]:
    """Ask every node which client (and pool) it serves."""
    nodes = wait_for_nodes(grid, expected, minimum)
    content = RecordDict({"config": job_config(job)})
    replies = grid.send_and_receive(
        [Message(content, dst_node_id=n, message_type="query", group_id="discover") for n in nodes], timeout=600
    )
    out, errors = {}, []
    for r in replies:
        if r.has_error():
            errors.append((r.error.reason or str(r.error.code)).strip().splitlines()[-1][:300])
            continue
        rec = r.content.config_records["client"]
        out[r.metadata.src_node_id] = (str(rec["client-id"]), str(rec["pool"]))
    if not out:
        raise UserError(f"no node answered the discovery query ({len(nodes)} nodes; errors: {errors[:2]})")
    return out


def sample(nodes: list[int], settings: LoopSettings, round_: int) -> list[int]:
    k = min(len(nodes), max(settings.round.min_clients, int(round(settings.round.fraction * len(nodes)))))
    rng = np.random.default_rng([settings.seed, round_])
    picked = rng.choice(len(nodes), size=k, replace=False)  # indices: node ids may exceed int64
    return sorted(nodes[int(i)] for i in picked)


def run_rounds(
    grid,
    job: Job,
    initial_state: dict[str, torch.Tensor] | Callable[[], dict[str, torch.Tensor]],
    settings: LoopSettings,
    out_dir: Path,
    resume: bool = False,
    on_round: Callable[[dict], None] = lambda rec: None,
) -> dict[str, torch.Tensor]:
    """Run ``settings.rounds`` rounds of ``job`` from ``initial_state`` (or its checkpoint); returns the
    final global state. ``initial_state`` may be a function that makes it, called only when there is no
    checkpoint to resume (the loop then holds the only copy)."""
    ckpt_dir = out_dir / "checkpoint"
    metrics_path = out_dir / "rounds.jsonl"
    start, meta = 1, {}
    loaded = load_checkpoint(ckpt_dir) if resume else None
    state = None if loaded is not None else initial_state() if callable(initial_state) else initial_state
    del initial_state  # a callable's result is then held only here (and replaced every round)
    if loaded is not None:
        done, state, meta = loaded
        restore_rng(meta["rng"])
        start = done + 1
        if metrics_path.is_file():  # drop metric lines of rounds after the checkpoint
            keep = [ln for ln in metrics_path.read_text().splitlines() if ln and json.loads(ln)["round"] <= done]
            metrics_path.write_text("".join(x + "\n" for x in keep))
    elif metrics_path.exists():
        metrics_path.unlink()
    node_clients = discover(grid, job, expected=job.num_clients, minimum=settings.round.min_clients)
    seen = sorted(n for n, (_, pool) in node_clients.items() if pool == "seen")
    if not seen:
        raise UserError("no seen-pool client among the nodes: nothing can train")
    k = len(sample(seen, settings, 1))  # every round samples this many
    dp = _dp(settings)
    strategy, accountant = _server_side(settings, k, len(seen), meta if loaded is not None else None)
    for round_ in range(start, settings.rounds + 1):
        t0 = time.perf_counter()
        chosen = sample(seen, settings, round_)
        content = RecordDict({"arrays": to_arrays(state), "config": job_config(job.for_round(round_))})
        content.config_records["config"].update(client_config(dp))
        state = None  # the round's message now holds the only copy of the global state
        state, record = _train_round(grid, content, round_, chosen, node_clients, settings, strategy, metrics_path)
        if accountant is not None:
            accountant.compose(round_event(dp, k, len(seen)))
            record["privacy"] = {"epsilon": float(accountant.get_epsilon(dp.dp_target_delta)),
                                 "delta": dp.dp_target_delta, "clipping_norm": float(strategy.clipping_norm)}
        del content
        trim_freed_memory(ROUND_TRIM_BYTES)  # the round's messages and the clients' copies (when many MB)
        if settings.round.eval_pool and settings.round.eval_every and round_ % settings.round.eval_every == 0:
            record["eval"] = evaluate_pool(grid, job, state, node_clients, settings.round.eval_pool, round_)
        record["seconds"] = round(time.perf_counter() - t0, 3)
        _append(metrics_path, record)
        if settings.snapshot_every and round_ % settings.snapshot_every == 0:
            save_tensors(out_dir / "snapshots" / f"round{round_:04d}.safetensors", state,
                         metadata={"round": str(round_)})
        if round_ % settings.round.checkpoint_every == 0 or round_ == settings.rounds:
            server = {**strategy_meta(strategy), **({"accountant": accountant.state_dict()} if accountant else {})}
            save_checkpoint(ckpt_dir, round_, state, {"job": job.to_dict(), "server": server}, strategy_state(strategy))
        on_round(record)
    if accountant is not None:
        write_json(out_dir / "privacy.json", spent(dp, accountant, strategy, settings.rounds, k, len(seen)))
    return state


def _dp(settings: LoopSettings):
    """The stage's differential privacy, or None."""
    return settings.privacy if settings.privacy is not None and settings.privacy.enabled else None


def _server_side(settings: LoopSettings, k: int, population: int, checkpoint_meta: dict | None):
    """``(strategy, accountant or None)`` for a stage sampling ``k`` of ``population`` clients a round:
    the combination checked, the privacy budget checked before any round, and (resuming) the server state
    of ``checkpoint_meta`` restored."""
    dp = _dp(settings)
    if settings.secure is not None and settings.secure.secure_aggregation:
        check_combination(settings.strategy.name, settings.secure, dp is not None)
    strategy = make_strategy(settings.strategy, dp, k)
    accountant = None
    if dp is not None:
        check_budget(dp, settings.rounds, k, population, settings.name)
        accountant = new_accountant(dp, population)
    if checkpoint_meta is not None:
        server = checkpoint_meta.get("server", {})
        restore_strategy_state(strategy, checkpoint_meta["server_state"])
        restore_strategy_meta(strategy, server)
        if accountant is not None and server.get("accountant"):
            accountant.load_state_dict(server["accountant"])
    return strategy, accountant


def _train_round(grid, content, round_, chosen, node_clients, settings, strategy, metrics_path):
    """Send ``content`` (the global state and the job) to the ``chosen`` nodes, aggregate their replies:
    ``(new state, round record)``. Its own function so that the round's messages and replies (a copy of
    the state each) are gone once it returns, not alive through the next round."""
    arrays = content.array_records["arrays"]
    trained, frozen = trainable(arrays, settings.frozen_prefix)
    with quiet():  # its per-round INFO lines would break the progress display
        content.config_records["config"].update(begin_round(strategy, round_, trained, chosen))
    if settings.secure is not None and settings.secure.secure_aggregation:
        return _secure_round(grid, content, round_, chosen, node_clients, settings, strategy)
    msgs = [Message(content, dst_node_id=n, message_type="train", group_id=str(round_)) for n in chosen]
    replies = list(grid.send_and_receive(msgs, timeout=settings.round.client_timeout_s))
    del msgs
    ok = [r for r in replies if not r.has_error()]
    dp = _dp(settings)
    # under DP only a client's own update decides its refusal (the norm ratio would let one client's data
    # decide another's inclusion); clipping bounds every update instead
    ratio = 0.0 if dp is not None else settings.strategy.max_update_norm_ratio
    refused, norms = screen(arrays, ok, list(trained.keys()), ratio)
    norm_of = {r.metadata.src_node_id: n for r, n in zip(ok, norms, strict=True) if isinstance(n, float)}
    reasons = {ok[i].metadata.src_node_id: why for i, why in refused.items()}
    ok = [r for i, r in enumerate(ok) if i not in refused]
    ok_nodes = {r.metadata.src_node_id for r in ok}
    failed = {node_clients[n][0]: reasons.get(n) or _reason(replies, n) for n in chosen if n not in ok_nodes}
    record = {"round": round_, "sampled": [node_clients[n][0] for n in chosen], "failed": failed}
    if len(failed) > settings.round.max_failure_fraction * len(chosen) or not ok:
        _append(metrics_path, {**record, "stopped": True})
        raise UserError(
            f"round {round_}: {len(failed)} of {len(chosen)} clients failed "
            f"(max_failure_fraction {settings.round.max_failure_fraction}): {failed}"
        )
    clients = {node_clients[r.metadata.src_node_id][0]: {**_client_metrics(r), "update_norm": norm_of[r.metadata.src_node_id]}
               for r in ok}  # the norm before any clipping: what a DP clipping norm is chosen against
    del replies
    if dp is not None and dp.dp.startswith("server-"):  # the server clips (``fl.privacy``)
        ok = [clip_reply(r, trained, strategy.clipping_norm, dp.dp.endswith("adaptive")) for r in ok]
    if dp is not None:  # a fixed denominator: a missing update counts as none (the global state)
        ok += [zero_update(trained, n, dp.dp.endswith("adaptive")) for n in chosen if n not in ok_nodes]
    with quiet(), seeded_noise(settings.seed, round_):
        merged, metrics = aggregate(strategy, round_, ok, trained, frozen, uniform=dp is not None)
    del ok
    state = {k: merged[k] for k in arrays.keys()}  # the global state's key order
    record.update(metrics)
    record["clients"] = clients
    return state, record


def _secure_round(grid, content, round_, chosen, node_clients, settings, strategy):
    """A round through SecAgg+: the server learns only the mean (every array, the frozen ones too, so the
    clients get the whole state), which the strategy then treats as one client's update."""
    arrays = content.array_records["arrays"]
    trained, frozen = trainable(arrays, settings.frozen_prefix)
    everything = ArrayRecord({k: arrays[k] for k in sorted(arrays.keys())})
    config = dict(content.config_records["config"].items())
    mean, client_metrics = secure_mean(grid, everything, config, chosen, round_, settings.secure,
                                       settings.round.client_timeout_s)
    with quiet():
        merged, metrics = aggregate(strategy, round_, [pseudo_reply(mean, client_metrics)], trained, frozen)
    state = {k: merged[k] for k in arrays.keys()}
    record = {"round": round_, "sampled": [node_clients[n][0] for n in chosen], "failed": {},
              "secure_aggregation": True, **metrics}  # who dropped out is the protocol's, not shown to the loop
    return state, record


def _client_metrics(reply) -> dict[str, float]:
    """One client's own metrics (every scalar of its reply's metric records but the weight)."""
    out = {}
    for record in reply.content.metric_records.values():
        out.update({k: float(v) for k, v in record.items() if k != "num-examples" and isinstance(v, int | float)})
    return out


def evaluate_pool(grid, job, state, node_clients, pool: str, round_: int) -> dict:
    nodes = sorted(n for n, (_, p) in node_clients.items() if p == pool)
    content = RecordDict({"arrays": to_arrays(state), "config": job_config(job.for_round(round_))})
    msgs = [Message(content, dst_node_id=n, message_type="evaluate", group_id=f"eval-{round_}") for n in nodes]
    sums: dict[str, float] = {}  # per metric the task scores, over the pool's rows
    total = 0
    for r in grid.send_and_receive(msgs, timeout=None):
        if not r.has_error():
            m = r.content.metric_records["metrics"]
            for k, v in m.items():
                if k.startswith("sum-"):
                    sums[k[len("sum-"):]] = sums.get(k[len("sum-"):], 0.0) + float(v)
            total += int(m["num-examples"])
    return {"pool": pool, "n": total, **{k: v / total if total else float("nan") for k, v in sums.items()}}


def _reason(replies, node: int) -> str:
    for r in replies:
        if r.metadata.src_node_id == node and r.has_error():
            return (r.error.reason or f"error code {r.error.code}").strip().splitlines()[-1][:200]
    return "no reply within the time limit"


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
