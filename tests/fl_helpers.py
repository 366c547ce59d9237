"""Shared helpers for the federated-runtime tests: tiny configs on real MasakhaNEWS rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_overrides(data_dir, languages=("hau", "yor"), clients=2, rounds=2, **extra) -> list[str]:
    sets = {
        "data.path": json.dumps(str(data_dir)),
        "data.languages": json.dumps(list(languages)),
        "data.clients_per_language": clients,
        "data.max_train_per_client": 16,
        "data.max_test_per_client": 8,
        "data.max_length": 16,
        "model.name": "tiny-bert",
        "base_model.kind": '"standard-fl"',
        "base_model.rounds": rounds,
        "base_model.local_epochs": 1,
        "base_model.batch_size": 8,
        "base_model.lr": 1e-3,
        "federation.min_clients": 2,
        "federation.checkpoint_every": 1,
        "personalise.epochs": 1,
        "personalise.methods": '["none"]',
        "personalise.pools": '["seen"]',
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_env(tmp_path) -> dict:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    env["PYTHONPATH"] = str(REPO / "tests")
    # the SuperLink and SuperNodes start flower-superexec etc. by name: the venv's bin must be on PATH
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_python(code: str, tmp_path, timeout=600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env or python_env(tmp_path), cwd=REPO)


def run_standard_fl(cfg, out, resume=True, client_app=None, on_round=None):
    """Train the Standard-FL base model (the registered ``base_model`` stage); returns the merged model."""
    from fedp2eft.fl.engines import train_stage
    from fedp2eft.methods.standard_fl import STANDARD_FL_STAGE

    return train_stage(cfg, STANDARD_FL_STAGE, "off-the-shelf", cfg.base_model.seed, out, resume=resume,
                       client_app=client_app, on_round=on_round)
