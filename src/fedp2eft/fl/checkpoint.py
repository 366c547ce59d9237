"""Server checkpoints: tensors as safetensors, everything else (round, RNG states, history) as JSON.

``state-<round>.safetensors`` (and the strategy's server state, ``strategy-<round>.safetensors``) are written
first, then ``checkpoint.json`` naming them — the JSON rename is the commit point, so a crash leaves either
the previous or the new checkpoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..atomic import save_tensors, write_json


def rng_states() -> dict:
    return {
        "python": repr(random.getstate()),
        "numpy": _np_state(),
        "torch": torch.get_rng_state().tolist(),
    }


def _np_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def restore_rng(states: dict) -> None:
    import ast

    random.setstate(ast.literal_eval(states["python"]))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))


def save_checkpoint(folder: Path, round_: int, state: dict[str, torch.Tensor], meta: dict,
                    server_state: dict[str, torch.Tensor] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"state-{round_:05d}.safetensors"
    save_tensors(folder / name, state)
    files = {"state_file": name}
    if server_state:
        files["strategy_file"] = f"strategy-{round_:05d}.safetensors"
        save_tensors(folder / files["strategy_file"], server_state)
    write_json(folder / "checkpoint.json", {"round": round_, **files, "rng": rng_states(), **meta})
    for old in [*folder.glob("state-*.safetensors"), *folder.glob("strategy-*.safetensors")]:
        if old.name not in files.values():
            old.unlink()


def load_checkpoint(folder: Path) -> tuple[int, dict[str, torch.Tensor], dict] | None:
    """``(round, global state, meta)``; ``meta["server_state"]`` holds the strategy's tensors ({} if none)."""
    meta_path = folder / "checkpoint.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    state = load_file(str(folder / meta["state_file"]))
    meta["server_state"] = load_file(str(folder / meta["strategy_file"])) if meta.get("strategy_file") else {}
    return int(meta["round"]), state, meta
