"""What a stage folder records (``settings.json``), and the refusal of a folder trained otherwise.

A folder whose recorded settings differ from the config is refused, naming the keys that differ, or
— under ``--fresh`` — deleted and trained again. Settings nest: a stage records its base model's
settings, so retraining the base model invalidates the stages trained on it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from ..atomic import write_json
from ..errors import UserError
from ..schema import section_dict


def flatten(d: dict, dotted: bool = True, prefix: str = "") -> dict:
    """Nested settings in one level: keys joined with dots (``dotted``), or the inner keys merged as they
    are (a stage's record: a PSG's BT-LoRA settings under ``<stage>.<key>``)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}" if dotted else k
        if isinstance(v, dict):
            out.update(flatten(v, dotted, key + "." if dotted else ""))
        else:
            out[key] = v
    return out


def settings_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every (dotted) key whose value differs."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "<absent>") != b.get(k, "<absent>")]


def claim_stage(folder: Path, settings: dict, fresh: bool = False) -> None:
    """Make ``folder`` belong to ``settings``: record them in a new folder; accept a folder with the
    same settings; otherwise refuse (naming the keys that differ) or, with ``fresh``, delete it."""
    folder = Path(folder)
    path = folder / "settings.json"
    settings = json.loads(json.dumps(settings))  # the JSON form, as it is compared on disk
    if path.is_file():
        old = json.loads(path.read_text())
        if old == settings:
            return
        problem = f"{folder} was trained with other settings ({'; '.join(settings_diff(old, settings)[:6])})"
    elif folder.is_dir() and any(folder.iterdir()):
        problem = f"{folder} holds a stage written without recorded settings"
    else:
        problem = None
    if problem is not None:
        if not fresh:
            raise UserError(f"{problem}; use --fresh to train it again (drops the runs it served) or another --out")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


# data keys added after stage folders were committed: recorded only when set, so those folders stay valid
_LATER_DATA_KEYS = ("label_column", "text_columns", "pair_column", "group_size", "task")


def data_settings(cfg) -> dict:
    """The data settings a stage depends on: all but ``path`` (a copy elsewhere is the same data)."""
    defaults = dataclasses.asdict(type(cfg.data)())
    return {k: v for k, v in dataclasses.asdict(cfg.data).items()
            if k != "path" and not (k in _LATER_DATA_KEYS and v == defaults[k])}


def sampling_settings(cfg) -> dict:
    """The federation settings that decide which clients a stage's rounds sample."""
    return {"fraction": cfg.federation.round.fraction, "min_clients": cfg.federation.round.min_clients}


def aggregation_settings(cfg, stage: str) -> dict:
    """How ``stage``'s server aggregates (``{"aggregation": ..., "privacy": ...}``); each part only when it
    is not the default (plain FedAvg with the default update screen, no differential privacy): what every
    stage trained before strategies existed, so their records stay valid."""
    agg, privacy = cfg.federation.aggregation, cfg.federation.privacy
    out = {}
    if not agg.is_default(stage):
        name, args = agg.for_stage(stage)
        out["aggregation"] = {"strategy": name, "strategy_args": args,
                              "max_update_norm_ratio": agg.max_update_norm_ratio}
    if privacy.enabled:  # all but the budget check, which refuses a stage but never changes one
        out["privacy"] = {k: v for k, v in dataclasses.asdict(privacy).items() if k != "dp_target_epsilon"}
    if cfg.federation.secure.secure_aggregation:  # its quantisation changes the aggregate
        out["secure_aggregation"] = dataclasses.asdict(cfg.federation.secure)
    return out


def precision_settings(cfg) -> dict:
    """``{"precision": "bf16"}`` where this process's forward passes run in bf16 (``experiment.precision``
    resolved), else nothing: what every stage trained before the setting existed ran in fp32."""
    from .base_models import resolved_precision

    precision = resolved_precision(cfg)
    return {} if precision == "fp32" else {"precision": precision}


def base_settings(cfg) -> dict:
    """What the base model depends on (for a trained base: model, data, its training and sampling)."""
    from ..methods.registry import base_kind_sections, base_kinds

    kind = cfg.base_model.kind
    out = {"kind": kind, "model": dataclasses.asdict(cfg.model)}
    if kind in base_kinds():
        base_model = section_dict(cfg.base_model)
        if not base_model.get("snapshot_every"):  # added later; kept snapshots never change the base itself
            base_model.pop("snapshot_every", None)
        out |= {"data": data_settings(cfg), "base_model": base_model,
                "federation": sampling_settings(cfg) | aggregation_settings(cfg, base_kinds()[kind].name)}
        for section in base_kind_sections(kind):  # e.g. PF2LoRA's base trains with the [pf2lora] settings
            out[section] = section_dict(getattr(cfg, section))  # flat, as the TOML table
        out |= precision_settings(cfg)
    return out
