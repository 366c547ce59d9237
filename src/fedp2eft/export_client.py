"""``fedp2eft export``: personalise one client with a finished run's base model and PSG (Alg. 2) and
write the result as a plain peft LoRA adapter (λ folded into B), loadable without fedp2eft."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from .adapters import export_plain_lora
from .bases import base_source
from .config import Config
from .errors import UserError
from .methods.bt_training import finetune_pruned_model, personalisation_settings
from .methods.fedp2eft import PSG_STAGE
from .psg import client_lambdas
from .setup.federation import client_task, load_federation, task_for
from .setup.layout import RunLayout


def export_client(cfg: Config, run: Path, client_id: str, budget: int, seed: int, out: Path) -> tuple[float, Path]:
    q, p = cfg.fedp2eft, cfg.personalise
    if budget < 1 or budget > q.r_init:
        raise UserError(f"--budget {budget}: must be between 1 and fedp2eft.r_init = {q.r_init}")
    layout = RunLayout(run)
    psg_file = layout.stage(PSG_STAGE.name, seed) / PSG_STAGE.artifact
    if not psg_file.is_file():
        raise UserError(f"no trained PSG at {psg_file}; run fedp2eft run first (with method fedp2eft)")
    fed = load_federation(cfg)
    client = next((c for c in fed.clients if c.cid == client_id), None)
    if client is None:
        raise UserError(f"unknown client {client_id!r}; e.g. {[c.cid for c in fed.clients[:3]]}")
    shared = base_source(cfg, layout).open(cfg, len(fed.label_names), seed)
    base = shared.for_client(client_id)
    psg = PSG_STAGE.finalize(base, load_file(str(psg_file)), PSG_STAGE.client_settings(cfg, seed, None), psg_file.parent)
    task = client_task(client, shared.tokenizer, cfg.data.max_length, task_for(cfg))
    s = personalisation_settings(q.bt_settings(p, seed), p.train_settings(seed))
    model = finetune_pruned_model(base, task.train, client_lambdas(base, psg, task, p.head), budget, s, task.kind)
    folder = export_plain_lora(model, base, out, modules_to_save=task.kind.saved_modules(p.head))
    scores = task.kind.score(task.kind.predict(model, task.test, p.eval_batch_size), task.test)[task.kind.metric]
    acc = sum(scores) / max(len(scores), 1)
    (folder / "fedp2eft_export.json").write_text(json.dumps(
        {"client": client_id, "budget": budget, "seed": seed, "test_accuracy": acc, "run": str(run)}, indent=1))
    return acc, folder
