"""The federation a config describes, and the clients' encoded tasks."""

from __future__ import annotations

import functools
import json

from ..data import FederationSpec, get_dataset
from ..data.partition import Client, Federation
from ..methods import ClientTask
from ..methods.registry import StageContext
from ..models.memory_saving import held, tokenizer_key
from ..tasks import Task, make_task


def task_name(cfg) -> str:
    """The task a config poses: ``data.task``, else its dataset's own (``data.registry``)."""
    return cfg.data.task or get_dataset(cfg.data.dataset).task


def task_for(cfg) -> Task:
    """The task object of the config (``tasks.registry``): e.g. Fed-Aya's instruction-tuned generation, with
    the ``[generation]`` settings; MasakhaNEWS's and XNLI's classification."""
    return make_task(task_name(cfg), cfg)


def stage_context(cfg, seed: int, budget: int | None = None, client_state_dir: str | None = None) -> StageContext:
    """What a stage's functions get from the runner: the seed, the budget and the config's task."""
    return StageContext(seed=seed, budget=budget, client_state_dir=client_state_dir, problem=task_for(cfg))


def load_federation(cfg) -> Federation:
    """The config's dataset, read and partitioned by its registered ``load``; then the per-client caps."""
    d = cfg.data
    dataset = get_dataset(d.dataset)
    spec = FederationSpec(
        clients_per_language=d.clients_per_language,
        alpha=d.dirichlet_alpha,
        seed=d.partition_seed,
        train_per_pool=d.train_per_pool or None,
        test_per_pool=d.test_per_pool or None,
        min_train_per_client=d.min_train_per_client,
        scheme=d.partition,
        group_size=d.group_size or dataset.group_size,
    )
    fed = dataset.load(d, spec)
    for c in fed.clients:
        if d.max_train_per_client:
            c.train = cap_rows(c.train, d.max_train_per_client)
        if d.max_test_per_client:
            c.test = cap_rows(c.test, d.max_test_per_client)
    return fed


def cap_rows(rows: list, cap: int) -> list:
    """At most ``cap`` rows, taken round-robin over the rows' languages in their order (a client of one
    language keeps its first ``cap`` rows; a Fed-Aya client speaking several keeps some of each)."""
    if len(rows) <= cap:
        return rows
    by_lang: dict[str, list] = {}
    for r in rows:
        by_lang.setdefault(r.language, []).append(r)
    kept: list = []
    queues = list(by_lang.values())
    while len(kept) < cap:
        for q in queues:
            if q and len(kept) < cap:
                kept.append(q.pop(0))
    chosen = {id(r) for r in kept}
    return [r for r in rows if id(r) in chosen]  # in the rows' own order


def client_task(client: Client, tokenizer, max_length: int, problem: Task) -> ClientTask:
    """The client's rows encoded for ``problem``: once per process and (tokenizer, length, task), kept on
    the client (``Client.encoded``: a few bytes per token), so a released tokenizer
    (``models.memory_saving``) is loaded again only for a client not encoded before."""
    key = (tokenizer_key(tokenizer), max_length, type(problem).__name__, repr(sorted(vars(problem).items())),
           id(client.train), id(client.test))
    if key not in client.encoded:
        with held(tokenizer):
            client.encoded[key] = ClientTask(client.cid, client.language,
                                             problem.encode(tokenizer, client.train, max_length),
                                             problem.encode(tokenizer, client.test, max_length), problem)
    return client.encoded[key]


def client_tasks(clients: list[Client], tokenizer, max_length: int, problem: Task) -> list[ClientTask]:
    with held(tokenizer):  # one load for the whole list
        return [client_task(c, tokenizer, max_length, problem) for c in clients]


@functools.lru_cache(maxsize=2)
def cached_federation(experiment: str):
    """``(config, federation, clients by id)`` for an experiment JSON (``setup.jobs.experiment_json``),
    loaded once per process: the server and in-process clients share it."""
    from ..config import from_dict

    cfg = from_dict(json.loads(experiment))
    fed = load_federation(cfg)
    return cfg, fed, {c.cid: c for c in fed.clients}
