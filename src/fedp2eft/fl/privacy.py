"""Central differential privacy on every stage, from Flower's parts: its DP strategy wrappers (noise on the
server, clipping on the server or — through its client mods — on the clients, fixed or adaptive) and its
RDP accountant (``flwr.supercore.privacy_accounting``, over Google's ``dp-accounting``).

The mechanism per round (DP-FedAvg, McMahan et al. 2018; adaptive clipping, Andrew et al. 2021): each of
the round's k sampled clients' updates Δᵢ = wᵢ − wᵗ is clipped to norm ≤ C, the server takes their
*unweighted* mean with a *fixed* denominator k and adds N(0, (z·C/k)²) to every coordinate. What the loop
adds to Flower's wrappers, kept thin:

- **Uniform weights.** The wrappers calibrate the noise to a mean of k clipped updates; the loop sends
  them every update with weight 1 (FedAvg's ``num-examples`` weighting would change the sensitivity).
- **A fixed denominator.** A sampled client that failed, or whose update was refused, counts as a zero
  update (the global state itself), so the mean is still over k and the noise calibration holds.
- **Accounting.** Clients are sampled uniformly without replacement, k of the N seen clients per round;
  under that sampling dp-accounting's relation is *replace one*, whose sensitivity for the mean is 2C/k,
  so each round is composed as a sampled Gaussian event of noise multiplier z/2 (a conservative reading
  of Flower's noise std z·C/k). Adaptive clipping's effective noise (the wrapper splits z between the
  updates and the clipped count) composes to z (Andrew et al., §3), accounted the same way.
- **Only non-finite updates are refused.** The norm-ratio screen compares a client's update with the
  others', so one client's data would decide whether another's counts; under DP it is off (clipping
  bounds every update).
- **Server-side clipping is the loop's.** Flower 1.41's server-side wrappers clip with
  ``min(1, C / ‖Δ‖)``, which divides by zero for an update that did not move (a client with nothing to
  learn, and the fixed denominator's stand-ins above). So under ``server-fixed`` / ``server-adaptive`` the
  loop clips each update by the same FlatClip rule (``clip_reply``; a zero update stays zero, its norm bit
  0) and Flower's client-side wrapper adds the noise and adapts C from the norm bits — the same
  arithmetic as the server-side wrapper, without the division. (Flower's client mods have the same division:
  a client whose update is zero fails its round and stands in as a zero update.)
- **Seeded noise.** Flower's wrappers draw from NumPy's global RNG; the loop seeds it from (stage
  seed, round) for the aggregation and puts the process's state back after it (``seeded_noise``), so a
  stage's noise is reproducible and a resumed stage equals an uninterrupted one.
- **Refused before training.** A stage whose ε after all its rounds would exceed ``dp_target_epsilon``
  stops with a one-line error before its first round.
- **Resume.** The accountant's ledger and adaptive clipping's current C go into the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    Strategy,
)
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from ..config import Privacy
from ..errors import UserError
from ..progress import quiet

DP_STRATEGIES = ("fedavg", "fedprox")  # a mean of the clipped updates: what the wrappers' noise is calibrated to
CLIPPING_MODE = "dp-clipping"  # config key: "fixed" or "adaptive" when the clients clip
_WRAPPERS = {  # the noise (and C's adaptation); who clips is the mode's first word (see the module)
    "client-fixed": DifferentialPrivacyClientSideFixedClipping,
    "server-fixed": DifferentialPrivacyClientSideFixedClipping,
    "client-adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
    "server-adaptive": DifferentialPrivacyClientSideAdaptiveClipping,
}


def with_privacy(strategy: Strategy, name: str, privacy: Privacy, sample_size: int) -> Strategy:
    """``strategy`` wrapped in Flower's DP wrapper for ``privacy.dp`` (k = ``sample_size`` clients a round)."""
    if name not in DP_STRATEGIES:
        raise UserError(f"config key federation.dp: differential privacy needs strategy {' or '.join(DP_STRATEGIES)} "
                        f"(its noise is calibrated to a mean of clipped updates), not {name!r}")
    cls = _WRAPPERS[privacy.dp]
    try:
        if privacy.dp.endswith("fixed"):
            return cls(strategy, noise_multiplier=privacy.dp_noise_multiplier, clipping_norm=privacy.dp_clipping_norm,
                       num_sampled_clients=sample_size)
        return cls(strategy, noise_multiplier=privacy.dp_noise_multiplier, num_sampled_clients=sample_size,
                   initial_clipping_norm=privacy.dp_clipping_norm,
                   target_clipped_quantile=privacy.dp_target_clipped_quantile, clip_norm_lr=privacy.dp_clip_norm_lr,
                   clipped_count_stddev=privacy.dp_clipped_count_stddev or None)
    except ValueError as exc:  # e.g. adaptive clipping's count noise too small for z at this k
        raise UserError(f"config key federation.dp = {privacy.dp!r}: {exc}") from None


def client_config(privacy: Privacy | None) -> dict:
    """What the round's config tells the clients beyond the wrapper's ``clipping_norm``: which Flower mod clips."""
    if privacy is None or not privacy.dp.startswith("client-"):
        return {}
    return {CLIPPING_MODE: privacy.dp.removeprefix("client-")}


def new_accountant(privacy: Privacy, population: int) -> RdpAccountant:
    return RdpAccountant(PrivacyConfig(target_delta=privacy.dp_target_delta, population_size=population,
                                       neighboring_relation=NeighboringRelation.REPLACE_ONE,
                                       sampling_method=SamplingMethod.WITHOUT_REPLACEMENT))


def round_event(privacy: Privacy, sample_size: int, population: int) -> GaussianPrivacyEvent:
    """One round's release: k of N sampled without replacement, noise multiplier z/2 (see the module)."""
    return GaussianPrivacyEvent(noise_multiplier=privacy.dp_noise_multiplier / 2, sample_size=sample_size,
                                population_size=population)


def epsilon_after(privacy: Privacy, rounds: int, sample_size: int, population: int) -> float:
    """ε at ``dp_target_delta`` after ``rounds`` rounds (what a stage will have spent when it ends)."""
    accountant = new_accountant(privacy, population)
    accountant.compose(round_event(privacy, sample_size, population), count=rounds)
    return float(accountant.get_epsilon(privacy.dp_target_delta))


def check_budget(privacy: Privacy, rounds: int, sample_size: int, population: int, stage: str) -> float:
    """ε after all the stage's rounds; a one-line error if it exceeds ``dp_target_epsilon``."""
    eps = epsilon_after(privacy, rounds, sample_size, population)
    if privacy.dp_target_epsilon and eps > privacy.dp_target_epsilon:
        raise UserError(
            f"stage {stage}: {rounds} rounds of {sample_size} of {population} clients at dp_noise_multiplier "
            f"{privacy.dp_noise_multiplier:g} spend epsilon {eps:.3g} > dp_target_epsilon "
            f"{privacy.dp_target_epsilon:g} (delta {privacy.dp_target_delta:g}); raise the noise or lower the rounds")
    return eps


def spent(privacy: Privacy, accountant: RdpAccountant, strategy: Strategy, rounds: int, sample_size: int,
          population: int) -> dict:
    """The stage's privacy record: mechanism, parameters, accounting and (ε, δ) spent so far."""
    return {"dp": privacy.dp, "noise_multiplier": privacy.dp_noise_multiplier,
            "clipping_norm": float(getattr(strategy, "clipping_norm", privacy.dp_clipping_norm)),
            "sample_size": sample_size, "population": population, "rounds": rounds,
            "releases": accountant.num_releases,
            "epsilon": float(accountant.get_epsilon(privacy.dp_target_delta)) if accountant.num_releases else 0.0,
            "delta": privacy.dp_target_delta,
            "accounting": "RDP (dp-accounting via Flower), k of N sampled without replacement, replace-one, "
                          "noise multiplier z/2 per round"}


def zero_update(trained: ArrayRecord, node: int, adaptive: bool) -> Message:
    """A sampled client's place in the mean when its update is missing or refused: the global state."""
    metrics = MetricRecord({"num-examples": 1, **({"norm_bit": 0} if adaptive else {})})
    return Message(content=RecordDict({"arrays": ArrayRecord(dict(trained.items())), "metrics": metrics}),
                   dst_node_id=node, message_type=MessageType.TRAIN)


def clip_reply(reply: Message, trained: ArrayRecord, clipping_norm: float, adaptive: bool) -> Message:
    """The reply with its update Δ = w − wᵗ over the ``trained`` keys scaled by min(1, C/‖Δ‖) (FlatClip,
    McMahan et al. 2018; a zero update unchanged); under adaptive clipping with its norm bit (1: clipped)."""
    arrays = reply.content.array_records["arrays"]
    deltas = {k: arrays[k].numpy().astype(np.float64) - trained[k].numpy().astype(np.float64) for k in trained.keys()}
    norm = float(np.sqrt(sum(float(np.vdot(d, d)) for d in deltas.values())))
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    clipped = {k: Array((trained[k].numpy().astype(np.float64) + scale * d).astype(trained[k].numpy().dtype))
               for k, d in deltas.items()}
    (name, metrics), = reply.content.metric_records.items()
    metrics = MetricRecord({**metrics, **({"norm_bit": int(scale < 1)} if adaptive else {})})
    return Message(content=RecordDict({"arrays": ArrayRecord(clipped), name: metrics}),
                   dst_node_id=reply.metadata.src_node_id, message_type=MessageType.TRAIN)


@contextmanager
def seeded_noise(seed: int, round_: int) -> Iterator[None]:
    """NumPy's global RNG seeded from (``seed``, ``round_``) within the block, its state restored after."""
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence([seed, round_]).generate_state(4))
    try:
        yield
    finally:
        np.random.set_state(saved)


def dp_clipping_mod(msg: Message, ctxt, call_next) -> Message:
    """Flower's client-side clipping mod (fixed or adaptive) for a round whose strategy clips on the clients;
    every other message passes through."""
    config = msg.content.config_records.get("config")
    mode = config.get(CLIPPING_MODE) if config is not None else None
    if mode is None:
        return call_next(msg, ctxt)
    mod = {"fixed": fixedclipping_mod, "adaptive": adaptiveclipping_mod}[str(mode)]
    with quiet():  # its INFO line per update
        return mod(msg, ctxt, call_next)
