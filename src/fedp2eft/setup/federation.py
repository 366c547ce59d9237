"""The federation a config describes, and the clients' encoded tasks."""

from __future__ import annotations

import functools
import json

from ..data import FederationSpec, build_federation, load_dataset_by_name
from ..data.partition import Client, Federation
from ..methods import ClientTask
from ..tasks import CLASSIFICATION, Task


def load_federation(cfg) -> Federation:
    d = cfg.data
    dataset = load_dataset_by_name(d.dataset, d.path or None, d.languages or None)
    spec = FederationSpec(
        clients_per_language=d.clients_per_language,
        alpha=d.dirichlet_alpha,
        seed=d.partition_seed,
        train_per_pool=d.train_per_pool or None,
        test_per_pool=d.test_per_pool or None,
        min_train_per_client=d.min_train_per_client,
        scheme=d.partition,
    )
    fed = build_federation(dataset, spec)
    for c in fed.clients:
        if d.max_train_per_client:
            c.train = c.train[: d.max_train_per_client]
        if d.max_test_per_client:
            c.test = c.test[: d.max_test_per_client]
    return fed


def client_task(client: Client, tokenizer, max_length: int, kind: Task = CLASSIFICATION) -> ClientTask:
    return ClientTask(client.cid, client.language, kind.encode(tokenizer, client.train, max_length),
                      kind.encode(tokenizer, client.test, max_length), kind)


def client_tasks(clients: list[Client], tokenizer, max_length: int, kind: Task = CLASSIFICATION) -> list[ClientTask]:
    return [client_task(c, tokenizer, max_length, kind) for c in clients]


@functools.lru_cache(maxsize=2)
def cached_federation(experiment: str):
    """``(config, federation, clients by id)`` for an experiment JSON (``setup.jobs.experiment_json``),
    loaded once per process: the server and in-process clients share it."""
    from ..config import from_dict

    cfg = from_dict(json.loads(experiment))
    fed = load_federation(cfg)
    return cfg, fed, {c.cid: c for c in fed.clients}
