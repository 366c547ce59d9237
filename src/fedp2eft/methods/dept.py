"""DEPT (Iacob et al., 2024), its SPEC variant, as a base model that differs per client: full
fine-tuning in which the embedding tables (word, position, token type — every ``nn.Embedding`` of the
backbone) stay on each client and everything else (encoder, embedding LayerNorm, head) is averaged by
FedAvg (method-facts "Base models").

One round on client k (``dept_client_update``): the server's body is loaded into a copy of the base,
the client's own embeddings from its storage (the pretrained ones on its first round, as the authors'
``DEPTSeqClsClient`` keeps them when the client has no file); every parameter trains for
``local_epochs`` (AdamW, no weight decay); the embeddings are stored on the client as the rows
that changed (``adapters.client_part``: a row whose token the client never saw keeps its pretrained
value exactly), and only the body is returned.

The client's base model is the averaged body with its own embeddings. A client with no embeddings — an
unseen client, or a seen client never sampled — gets the averaged body with the pretrained embeddings:
the authors' code loads ``{cid}_embeds.pt`` for every client it serves and runs DEPT on the seen pool
only, so it defines no unseen client; the pretrained tables are what a new client starts DEPT from.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..adapters.client_part import apply_client_part, changed_rows_entries, client_part_file
from ..atomic import save_tensors
from ..training import proximal_term, train_model
from .interface import ClientTask
from .registry import BaseWithParts, FederatedStage, StageContext, register_base_kind
from .standard_fl import BaseModelConfig, load_state

UNSEEN = "averaged body + the pretrained embeddings"


def embedding_parameters(model: nn.Module) -> list[str]:
    """The names of the local parameters: the weight of every ``nn.Embedding`` (BERT: word, position and
    token-type tables)."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, nn.Embedding)]


def body_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What travels: every parameter except the embedding tables."""
    local = set(embedding_parameters(model))
    return {n: p.detach().clone() for n, p in model.named_parameters() if n not in local}


def dept_client_update(base: nn.Module, state: dict[str, torch.Tensor], task: ClientTask, s: BaseModelConfig,
                       seed: int, local_dir: str | Path, proximal_mu: float = 0.0):
    """One client's DEPT round (``[base_model]``'s local epochs, batch size and rate); returns ``(body state,
    num_examples, metrics)``, stores its embeddings."""
    if len(task.train) == 0:
        raise ValueError(f"client {task.client_id} has no training data")
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    load_state(model, state)
    path = client_part_file(local_dir, task.client_id)  # the client's embeddings are its part
    if path.is_file():
        apply_client_part(model, load_file(str(path)))
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    local = set(embedding_parameters(model))  # the client's own part: no proximal term
    with proximal_term(proximal_mu, [p for n, p in model.named_parameters() if n not in local]):
        losses = train_model(model, [{"params": params, "lr": s.lr}], task.train, s.local_epochs, s.batch_size,
                             seed, weight_decay=0.0, loss=task.problem.loss)
    if not all(math.isfinite(x) for x in losses):
        raise FloatingPointError(f"client {task.client_id}: non-finite DEPT loss")
    own, pretrained = dict(model.named_parameters()), dict(base.named_parameters())
    part = {}
    for name in embedding_parameters(model):
        part.update(changed_rows_entries(name, own[name], pretrained[name]))
    save_tensors(path, part)
    return body_state(model), len(task.train), {"train_loss": sum(losses) / max(len(losses), 1)}


def initial_body(base: nn.Module, s: BaseModelConfig, ctx: StageContext) -> dict[str, torch.Tensor]:
    return body_state(base)


def dept_base(base: nn.Module, state: dict[str, torch.Tensor], s: BaseModelConfig, folder: Path,
              ctx: StageContext) -> BaseWithParts:
    """The averaged body with the pretrained embeddings; each trained client's embeddings are its part, in
    its own storage."""
    model = copy.deepcopy(base)
    load_state(model, state)
    return BaseWithParts(model.eval(), Path(folder) / "clients", UNSEEN)


DEPT_STAGE = register_base_kind('dept', FederatedStage(
    name="base_dept", section="base_model", per_budget=False, client_state=True, artifact="body.safetensors",
    client_settings=lambda cfg: cfg.base_model, settings_type=BaseModelConfig, initial_state=initial_body,
    client_update=lambda base, state, task, s, ctx: dept_client_update(base, state, task, s, ctx.seed,
                                                                       ctx.client_state_dir, ctx.proximal_mu),
    finalize=dept_base,
))
"""DEPT's federated training (the stage of base source ``dept``); seeded by ``base_model.seed``."""
