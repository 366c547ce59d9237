"""Flower's SecAgg+ (Bell et al. 2020) for a stage's round: the server learns only the weighted mean of
the clients' updates, never one client's.

Flower 1.41 ships SecAgg+ for its legacy message formats only: the server side is a workflow
(``SecAggPlusWorkflow``) driven with a ``LegacyContext`` (a legacy strategy that picks the clients and a
client manager), the client side is a mod (``secaggplus_mod``) that expects the app to answer a legacy
``FitIns`` with a legacy ``FitRes`` (unnamed arrays). The project's loop keeps its own sampling and
message format, so this module is the thin bridge both ways:

- **Server** (``secure_mean``): the legacy context holds the round's trained arrays in a fixed key order
  and a client manager that returns exactly the loop's sampled nodes; the workflow runs its four stages
  (setup, key sharing, masked vectors, unmasking) over the loop's grid; its result is the mean of the
  updates weighted by ``num-examples``, quantised (``secagg_clipping_range``, ``secagg_quantization_range``).
- **Client** (``secagg_mod``): for a round that runs the protocol, Flower's mod around an adapter that
  turns the legacy ``FitIns`` into the project's train message (the key order travels in the config)
  and the project's reply into a legacy ``FitRes`` holding the *update* Δ = w − wᵗ (small numbers, far
  from the quantiser's clipping range; the server adds wᵗ back). A client whose update is not finite
  refuses to send it (the server could not see it to refuse it): it drops out, and the protocol
  reconstructs without it.

The server therefore cannot screen single updates (norms, robust rules): only strategies whose
aggregate is a function of the mean run under SecAgg+ — FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad,
FedAvgM, applied to the secure mean as if it were one client's. Differential privacy is refused with it:
SecAgg+ averages over the clients that finish the protocol, so DP's fixed denominator cannot be kept.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from ..config import SecureAggregation
from ..errors import UserError
from ..progress import quiet

SECAGG_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm")
KEYS = "secagg-keys"  # config key: the order of the trained arrays in the legacy (unnamed) format


class _SampledClients(SimpleClientManager):
    """The legacy strategy's client manager: exactly the nodes the loop sampled for the round."""

    def __init__(self, grid, nodes: list[int]):
        super().__init__()
        self._proxies = [GridClientProxy(n, grid, run_id=0) for n in nodes]

    def num_available(self) -> int:
        return len(self._proxies)

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        return list(self._proxies)


def secure_mean(grid, trained: ArrayRecord, config: dict, nodes: list[int], round_: int,
                settings: SecureAggregation, timeout: float) -> tuple[ArrayRecord, dict[str, float]]:
    """The weighted mean of the sampled ``nodes``' trained arrays, through SecAgg+; its clients' averaged
    metrics. A one-line error when too few clients finished the protocol to unmask the sum."""
    keys = list(trained.keys())
    params = ndarrays_to_parameters([trained[k].numpy() for k in keys])
    strategy = LegacyFedAvg(min_fit_clients=len(nodes), min_available_clients=len(nodes), accept_failures=True,
                            on_fit_config_fn=lambda _: {**config, KEYS: json.dumps(keys)},
                            fit_metrics_aggregation_fn=_weighted_metrics)
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            ServerConfig(num_rounds=round_), strategy, _SampledClients(grid, nodes))
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: round_})
    sent = compat.parameters_to_arrayrecord(params, keep_input=True)
    context.state.array_records[MAIN_PARAMS_RECORD] = sent
    try:
        workflow = SecAggPlusWorkflow(_count_or_fraction(settings.secagg_num_shares),
                                      _count_or_fraction(settings.secagg_reconstruction_threshold),
                                      max_weight=settings.secagg_max_weight,
                                      clipping_range=settings.secagg_clipping_range,
                                      quantization_range=settings.secagg_quantization_range, timeout=timeout)
    except ValueError as exc:
        raise UserError(f"config keys federation.secagg_*: {exc}") from None
    with quiet():  # its INFO lines per stage
        workflow(grid, context)
    result = context.state.array_records[MAIN_PARAMS_RECORD]
    if result is sent:  # the workflow replaces the record only when it unmasked the sum
        raise UserError(f"round {round_}: secure aggregation halted (too few of {len(nodes)} clients finished "
                        "the protocol to unmask the sum)")
    mean_update = parameters_to_ndarrays(compat.arrayrecord_to_parameters(result, keep_input=True))
    mean = ArrayRecord({k: Array((trained[k].numpy() + d).astype(trained[k].numpy().dtype))
                        for k, d in zip(keys, mean_update, strict=True)})
    fits = context.history.metrics_distributed_fit
    return mean, {k: float(v[-1][1]) for k, v in fits.items()}


def _count_or_fraction(value: float) -> int | float:
    """Flower reads an int as a count and a float as a fraction."""
    return int(value) if value > 1 and float(value).is_integer() else float(value)


def _weighted_metrics(results: list[tuple[int, dict]]) -> dict:
    total = sum(n for n, _ in results) or 1
    keys = set.intersection(*(set(m) for _, m in results)) if results else set()
    return {k: sum(n * float(m[k]) for n, m in results) / total for k in sorted(keys)}


def check_combination(strategy: str, settings: SecureAggregation, dp_on: bool) -> None:
    if not settings.secure_aggregation:
        return
    if strategy not in SECAGG_STRATEGIES:
        raise UserError(f"config key federation.secure_aggregation: the server sees only the sum, so strategy "
                        f"{strategy!r} (which needs each update) cannot run with it; use one of {list(SECAGG_STRATEGIES)}")
    if dp_on:
        raise UserError("config keys federation.secure_aggregation and federation.dp: SecAgg+ averages over the "
                        "clients that finish the protocol, so DP's fixed denominator cannot be kept; use one of them")


def secagg_mod(msg: Message, ctxt: Context, call_next) -> Message:
    """Flower's ``secaggplus_mod`` for a round that runs SecAgg+ (its configs in the message), with the
    legacy ↔ project adapter inside; every other message passes through."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    with quiet():
        return secaggplus_mod(msg, ctxt, lambda m, c: _legacy_reply(call_next(_project_message(m), c), m))


def _project_message(msg: Message) -> Message:
    """The legacy ``FitIns`` message as the project's train message (named arrays, the job config)."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    keys = json.loads(str(config.pop(KEYS)))
    arrays = parameters_to_ndarrays(fitins.parameters)
    msg.content = RecordDict({"arrays": ArrayRecord({k: Array(a) for k, a in zip(keys, arrays, strict=True)}),
                              "config": ConfigRecord(config)})
    return msg


def _legacy_reply(reply: Message, request: Message) -> Message:
    """The project's reply as a legacy ``FitRes`` of the update Δ = w − wᵗ (in the received key order)."""
    if reply.has_error():
        return reply
    sent = request.content.array_records["arrays"]
    mine = reply.content.array_records["arrays"]
    update = [mine[k].numpy() - sent[k].numpy() for k in sent.keys()]
    if not all(np.isfinite(u).all() for u in update):
        raise FloatingPointError("its update is not finite (NaN or Inf); not sent to the secure sum")
    (metrics,) = reply.content.metric_records.values()
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update), int(metrics["num-examples"]),
                    {k: v for k, v in metrics.items() if k != "num-examples"})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=request)


def pseudo_reply(mean: ArrayRecord, metrics: dict[str, float]) -> Message:
    """The secure mean as one client's reply, for a strategy that post-processes the mean (FedAdam, ...)."""
    content = RecordDict({"arrays": mean, "metrics": MetricRecord({"num-examples": 1, **metrics})})
    return Message(content=content, dst_node_id=0, message_type=MessageType.TRAIN)
