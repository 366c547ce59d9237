"""Loading a base model — off-the-shelf or from a folder a run wrote — and writing one. Never training:
base sources that train (Standard FL) do it as a federated stage (``stages``)."""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import json
from pathlib import Path

import torch

from ..adapters.client_part import apply_client_part, client_part_file
from ..atomic import atomic_folder, save_tensors
from ..memory import release_file_pages, trim_freed_memory
from ..models.precision import resolve_precision
from ..tasks import Task
from .federation import task_for

OFF_THE_SHELF = "off-the-shelf"
MODEL_META = "fedp2eft_classifier.json"
# base sources trained federatedly (``bases``): Standard FL's shared model, and the personalised-FL bases
# whose clients each keep a part of their own


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolved_precision(cfg) -> str:
    """``experiment.precision`` as this process runs it ("fp32" or "bf16"; "auto" resolved for its device):
    what the stages' clients run and what the stage folders and results record."""
    return resolve_precision(cfg.experiment.precision, default_device())


def load_base(cfg, source: str, num_labels: int, seed: int, problem: Task | None = None):
    """``(model, tokenizer)``: the configured model off the shelf (``source = "off-the-shelf"``; ``seed``
    seeds a fresh head) or the base-model folder ``source``, for the config's task (``problem``: default
    ``task_for(cfg)``), on the default device, in eval mode."""
    torch.manual_seed(seed)  # a fresh head's initialisation
    problem = problem or task_for(cfg)
    spec = cfg.model.name if source == OFF_THE_SHELF else str(source)
    model, tok = problem.load_model(spec, num_labels, cfg.model.pooling or None)
    return model.to(default_device()).eval(), tok


def state_fingerprint(model) -> str:
    """SHA-256 (first 16 hex digits) of every parameter and buffer, in name order: two base models with
    the same settings but different weights (another machine, another library version) differ here."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # a view, no copy
    release_file_pages(model.state_dict().values())  # the weights read only for this stop counting as resident
    return digest.hexdigest()[:16]


def save_base_model(model, tokenizer, folder: Path, meta: dict) -> None:
    """Write a base-model folder that the task's loader reads (backbone, tokenizer, a classifier's head),
    atomically."""
    gc.collect()
    trim_freed_memory()  # the stage's freed memory, before the save brings every weight's pages in
    with atomic_folder(folder) as tmp:
        model.backbone.save_pretrained(tmp, safe_serialization=True)
        release_file_pages(model.state_dict().values())  # and out again before the fingerprint reads them
        tokenizer.save_pretrained(tmp)
        shape = {"fingerprint": state_fingerprint(model)}
        if hasattr(model, "num_labels"):  # a classifier: its head and pooling
            save_tensors(tmp / "head.safetensors", model.head.state_dict())
            shape.update(num_labels=model.num_labels, pooling=model.pooling)
        (tmp / MODEL_META).write_text(json.dumps({**shape, **meta}, indent=1))


def folder_meta(folder: str | Path) -> dict:
    meta_file = Path(folder) / MODEL_META
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def folder_fingerprint(folder: Path) -> str | None:
    return folder_meta(folder).get("fingerprint")


def client_parts_dir(source: str) -> Path | None:
    """The clients' storage folder of a personalised base-model folder (None: every client shares it)."""
    if source == OFF_THE_SHELF:
        return None
    parts = folder_meta(source).get("client_parts")  # relative to the base-model folder (or absolute)
    return (Path(source) / parts).resolve() if parts else None


def personal_model(model, source: str, client_id: str):
    """Client ``client_id``'s base: ``model`` (the base from ``source``) with the client's own part applied
    (``adapters.client_part``) when ``source`` is a personalised base and the client has one; else
    ``model`` itself. The part is read from the client's own storage."""
    parts = client_parts_dir(source)
    path = client_part_file(parts, client_id) if parts is not None else None
    if path is None or not path.is_file():
        return model
    from safetensors.torch import load_file

    return apply_client_part(copy.deepcopy(model), load_file(str(path))).eval()


@functools.lru_cache(maxsize=1)
def cached_base(experiment: str, num_labels: int, seed: int, source: str = OFF_THE_SHELF):
    """``load_base`` once per process for a job's base (the server and in-process clients share it)."""
    from ..config import from_dict

    return load_base(from_dict(json.loads(experiment)), source, num_labels, seed)


def release_cached_base() -> None:
    """Drop the process's cached job base once a federated stage is over: the personalisation that
    follows opens its own base, and keeping this one would hold a second copy of the model."""
    cached_base.cache_clear()
    gc.collect()
    trim_freed_memory()
