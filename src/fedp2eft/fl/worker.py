"""What a node does for a message: load its client's data and the base model (cached per process,
never per client), run the job's registered stage (``methods.registry``) and return plain results.

The job (``setup.jobs.Job``, sent in every message) names the stage, the sections a node needs to
load its client (data, model), the base model the clients start from (``off-the-shelf`` or a
folder; a personalised base's client applies its own part, from its own storage), the stage's client settings and, for stages whose clients keep state between rounds, the
client-local folder. The trained copy of the model exists only for the duration of one call; a client's
encoded rows are kept (a few bytes per token, ``setup.federation.client_task``) so that the tokenizer,
released after encoding, is loaded again only for a client not encoded before.
"""

from __future__ import annotations

import torch

from ..memory import release_file_pages
from ..methods import ClientTask
from ..methods.registry import StageContext, get_stage
from ..models.memory_saving import row_read_tables, set_gradient_checkpointing
from ..models.precision import set_precision
from ..setup.base_models import cached_base, personal_model
from ..setup.federation import cached_federation, client_tasks, task_for
from ..setup.jobs import Job


def client_ids(experiment: str) -> list[tuple[str, str]]:
    """Every client of the federation as ``(client_id, pool)``; node i serves entry i."""
    _, fed, _ = cached_federation(experiment)
    return [(c.cid, c.pool) for c in fed.clients]


def base_model(job: Job):
    """The base model the job's clients start from; ``job.seed`` seeds an off-the-shelf head."""
    _, fed, _ = cached_federation(job.experiment)
    return cached_base(job.experiment, len(fed.label_names), job.seed, job.base_spec)


def client_model(job: Job, cid: str):
    """Client ``cid``'s own base: the job's base with the client's part when the base is personalised
    (FedDPA-T, DEPT, PF2LoRA; read from the client's storage), else the shared base itself."""
    base, _ = base_model(job)
    model = personal_model(base, job.base_spec, cid)
    set_precision(model, job.precision)  # the copies its stage trains inherit it
    return model


def client_task(job: Job, cid: str) -> ClientTask:
    cfg, _, by_id = cached_federation(job.experiment)
    client = by_id.get(cid)
    if client is None:
        raise KeyError(f"unknown client {cid!r}")
    _, tok = base_model(job)
    # the client's whole pool is encoded under one tokenizer load (memoised: later calls load nothing);
    # loading and releasing it per client fragments the heap (measured: +180 MiB of peak over one
    # evaluation round's 8 loads)
    peers = [c for c in cached_federation(job.experiment)[1].clients if c.pool == client.pool]
    return client_tasks(peers, tok, cfg.data.max_length, job_task(job))[peers.index(client)]


def job_task(job: Job):
    """The job's task (``setup.federation.task_for`` of the job's sections)."""
    cfg, _, _ = cached_federation(job.experiment)
    return task_for(cfg)


def _context(job: Job, proximal_mu: float = 0.0) -> StageContext:
    return StageContext(seed=job.round_seed, budget=job.budget, client_state_dir=job.client_state_dir,
                        problem=job_task(job), proximal_mu=proximal_mu)


def stage_context(job: Job) -> StageContext:
    """The context of the job's ``initial_state`` and ``finalize``: the stage's seed (not a round's)."""
    return StageContext(seed=job.seed, budget=job.budget, client_state_dir=job.client_state_dir, problem=job_task(job))


def train(job: Job, cid: str, state: dict[str, torch.Tensor], proximal_mu: float = 0.0):
    """One local update of the job's stage (with FedProx's term when ``proximal_mu`` > 0); returns
    ``(state, num_examples, metrics)``."""
    stage = get_stage(job.stage)
    base = client_model(job, cid)
    set_gradient_checkpointing(base, job.gradient_checkpointing)  # copies the stage trains inherit it
    try:
        return stage.client_update(base, state, client_task(job, cid), stage.settings_from_json(job.settings),
                                   _context(job, proximal_mu))
    finally:
        release_file_pages(row_read_tables(base))  # the embedding rows this client read: never accumulated


def evaluate(job: Job, cid: str, state: dict[str, torch.Tensor]) -> tuple[dict[str, float], int]:
    """``({metric: score sum}, rows)`` of the global state on the client's test split."""
    stage = get_stage(job.stage)
    if stage.evaluate is None:
        raise ValueError(f"federated evaluation is not defined for stage {job.stage!r}")
    base = client_model(job, cid)
    return stage.evaluate(base, state, client_task(job, cid), stage.settings_from_json(job.settings))
