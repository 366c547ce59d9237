"""``fedp2eft export``: personalise one client with a finished run's base model and PSG (Alg. 2) and
write the result as a plain peft LoRA adapter (λ folded into B), loadable without fedp2eft."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file

from .adapters import export_plain_lora
from .config import Config
from .errors import UserError
from .methods.batches import encode
from .methods.fedp2eft import client_lambdas, new_psg
from .methods.training import predict, saved_modules
from .pipeline import bt_settings, load_base_model, load_federation, psg_dir, train_settings


def export_client(cfg: Config, run: Path, client_id: str, budget: int, seed: int, out: Path) -> tuple[float, Path]:
    if budget < 1 or budget > cfg.fedp2eft.r_init:
        raise UserError(f"--budget {budget}: must be between 1 and fedp2eft.r_init = {cfg.fedp2eft.r_init}")
    psg_file = psg_dir(run, seed) / "psg.safetensors"
    if not psg_file.is_file():
        raise UserError(f"no trained PSG at {psg_file}; run fedp2eft run first (with method fedp2eft)")
    fed = load_federation(cfg)
    client = next((c for c in fed.clients if c.cid == client_id), None)
    if client is None:
        raise UserError(f"unknown client {client_id!r}; e.g. {[c.cid for c in fed.clients[:3]]}")
    if cfg.base_model.kind == "standard-fl" and not (run / "base_model" / "model").is_dir():
        raise UserError(f"no base model in {run / 'base_model' / 'model'}; run fedp2eft run first")
    base, tok = load_base_model(cfg, len(fed.label_names), seed, run)
    p = cfg.personalise
    psg = new_psg(base, cfg.fedp2eft.r_init, seed, p.head, cfg.fedp2eft.psg_init)
    psg.load_state_dict(load_file(str(psg_file)))
    train = encode(tok, client.train, cfg.data.max_length)
    test = encode(tok, client.test, cfg.data.max_length)
    from .methods.base import ClientTask
    from .methods.bt_training import finetune_pruned_model, personalisation_settings

    task = ClientTask(client.cid, client.language, train, test)
    s = personalisation_settings(bt_settings(cfg), train_settings(cfg, seed))
    model = finetune_pruned_model(base, train, client_lambdas(base, psg, task, p.head), budget, s)
    folder = export_plain_lora(model, base, out, modules_to_save=saved_modules(p.head))
    preds = predict(model, test, p.eval_batch_size)
    acc = sum(int(a == b) for a, b in zip(preds, test.labels)) / max(len(preds), 1)
    (folder / "fedp2eft_export.json").write_text(json.dumps(
        {"client": client_id, "budget": budget, "seed": seed, "test_accuracy": acc, "run": str(run)}, indent=1))
    return acc, folder
