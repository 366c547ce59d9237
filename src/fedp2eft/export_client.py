"""``fedp2eft export``: personalise one client with a finished run's base model and a method — FedP²EFT
with the run's PSG (Alg. 2) by default, or any method whose object gives its personalised model
(``personalised_model``: ``lora``, ``fedp2eft`` and its variants) — and write the result as a folder stock
transformers + peft load without fedp2eft (``adapters.export``). The run's own settings come from its
``results.json`` (``run_config``), so the run's ``--set`` overrides need not be repeated."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .adapters import export_for_transformers
from .bases import base_source
from .config import Config, from_dict
from .errors import UserError
from .methods.registry import get_method, get_spec
from .setup.federation import client_task, load_federation, task_for
from .setup.layout import RunLayout
from .setup.replicates import replicate_config, replicate_layout

PROBE = "a text to classify"  # LOAD.md's example input; its logits are recorded to check a load against


def run_config(run: Path, overrides: list[str] | None = None) -> Config:
    """The config a run folder's runs were made with (its ``results.json``), with ``overrides`` on top."""
    from .config import apply_overrides, migrate

    path = Path(run) / "results.json"
    if not path.is_file():
        raise UserError(f"{path} missing: --run must be a folder fedp2eft run wrote (or give the CONFIG)")
    try:
        raw = json.loads(path.read_text())["config"]
    except (ValueError, KeyError) as exc:
        raise UserError(f"{path}: not a results file ({exc})") from None
    return from_dict(apply_overrides(migrate(raw), overrides or []))


def export_client(cfg: Config, run: Path, client_id: str, budget: int, seed: int, out: Path,
                  method: str = "fedp2eft") -> tuple[float, Path]:
    from .stages import load_or_train

    layout = replicate_layout(RunLayout(run), cfg, seed)  # federation replicates: the seed's own federation
    cfg = replicate_config(cfg, seed)
    p, spec = cfg.personalise, get_spec(method)
    key, limit = spec.max_budget(cfg) if spec.max_budget is not None else ("", None)
    if budget < 1 or (limit is not None and budget > limit):
        raise UserError(f"--budget {budget}: must be >= 1" + (f" and <= {key} = {limit}" if limit is not None else ""))
    fed = load_federation(cfg)
    client = next((c for c in fed.clients if c.cid == client_id), None)
    if client is None:
        raise UserError(f"unknown client {client_id!r}; e.g. {[c.cid for c in fed.clients[:3]]}")
    source = base_source(cfg, layout)
    shared = source.open(cfg, len(fed.label_names), seed)
    base = shared.for_client(client_id)
    resources = {}
    if spec.stage is not None:  # the method's trained stage, read from the run (never trained here)
        b = budget if spec.stage.per_budget else None
        resources = {b: load_or_train(cfg, spec.stage, layout, seed, b, base, shared.spec, runner=None)}
    personaliser = get_method(method, cfg, resources, seed)
    if not hasattr(personaliser, "personalised_model"):
        raise UserError(f"--method {method}: it gives predictions, not a model to export (exportable: lora, fedp2eft)")
    task = client_task(client, shared.tokenizer, cfg.data.max_length, task_for(cfg))
    model = personaliser.personalised_model(base, task, budget, p, seed)
    if not hasattr(base, "num_labels"):
        raise UserError("export writes a personalised classifier; this run's task has no classifier head")
    folder = export_for_transformers(model, base, shared.tokenizer, out, fed.label_names, cfg.data.max_length)
    scores = task.problem.score(task.problem.predict(model, task.test, p.eval_batch_size), task.test)[task.problem.metric]
    model = model.eval()
    acc = sum(scores) / max(len(scores), 1)
    probe = shared.tokenizer([PROBE], return_tensors="pt", padding=True, truncation=True, max_length=cfg.data.max_length)
    with torch.no_grad():
        logits = model.eval()(**{k: v.to(next(model.parameters()).device) for k, v in probe.items()})[0]
    (folder / "fedp2eft_export.json").write_text(json.dumps(
        {"client": client_id, "method": method, "budget": budget, "seed": seed, "test_accuracy": acc, "run": str(run),
         "probe_text": PROBE, "probe_logits": logits.tolist()}, indent=1))
    return acc, folder
