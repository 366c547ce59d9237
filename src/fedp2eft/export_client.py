"""``fedp2eft export``: personalise one client with a finished run's base model and PSG (Alg. 2) and
write the result as a folder stock transformers + peft load without fedp2eft (``adapters.export``).
The run's own settings come from its ``results.json`` (``run_config``), so the run's ``--set``
overrides need not be repeated."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .adapters import export_for_transformers
from .bases import base_source
from .config import Config, from_dict
from .errors import UserError
from .methods.bt_training import finetune_pruned_model, personalisation_settings
from .methods.fedp2eft import PSG_STAGE
from .psg import client_lambdas
from .setup.federation import client_task, load_federation, task_for
from .setup.layout import RunLayout
from .setup.replicates import replicate_config, replicate_layout

PROBE = "a text to classify"  # LOAD.md's example input; its logits are recorded to check a load against


def run_config(run: Path, overrides: list[str] | None = None) -> Config:
    """The config a run folder's runs were made with (its ``results.json``), with ``overrides`` on top."""
    from .config import apply_overrides

    path = Path(run) / "results.json"
    if not path.is_file():
        raise UserError(f"{path} missing: --run must be a folder fedp2eft run wrote (or give the CONFIG)")
    try:
        raw = json.loads(path.read_text())["config"]
    except (ValueError, KeyError) as exc:
        raise UserError(f"{path}: not a results file ({exc})") from None
    return from_dict(apply_overrides(raw, overrides or []))


def export_client(cfg: Config, run: Path, client_id: str, budget: int, seed: int, out: Path) -> tuple[float, Path]:
    layout = replicate_layout(RunLayout(run), cfg, seed)  # federation replicates: the seed's own federation
    cfg = replicate_config(cfg, seed)
    q, p = cfg.fedp2eft, cfg.personalise
    if budget < 1 or budget > q.r_init:
        raise UserError(f"--budget {budget}: must be between 1 and fedp2eft.r_init = {q.r_init}")
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
    if not hasattr(base, "num_labels"):
        raise UserError("export writes a personalised classifier; this run's task has no classifier head")
    folder = export_for_transformers(model, base, shared.tokenizer, out, fed.label_names, cfg.data.max_length)
    scores = task.kind.score(task.kind.predict(model, task.test, p.eval_batch_size), task.test)[task.kind.metric]
    acc = sum(scores) / max(len(scores), 1)
    probe = shared.tokenizer([PROBE], return_tensors="pt", padding=True, truncation=True, max_length=cfg.data.max_length)
    with torch.no_grad():
        logits = model.eval()(**{k: v.to(next(model.parameters()).device) for k, v in probe.items()})[0]
    (folder / "fedp2eft_export.json").write_text(json.dumps(
        {"client": client_id, "budget": budget, "seed": seed, "test_accuracy": acc, "run": str(run),
         "probe_text": PROBE, "probe_logits": logits.tolist()}, indent=1))
    return acc, folder
