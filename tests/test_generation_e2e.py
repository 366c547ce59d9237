"""Every method on a causal LM, end to end on real Aya rows (tiny random decoder), on all three engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared_data_dir
from fl_helpers import REPO, python_env

METHODS = ["none", "lora", "adalora", "bt-lora", "fedl2p", "pf2lora", "fedp2eft", "lora-tuned"]


def aya_config(path: Path, tmp_path: Path, **extra) -> Path:
    sample = shared_data_dir() / "aya" / "aya_sample.jsonl"
    if not sample.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"shared Aya sample missing at {sample}")
        pytest.skip(f"shared Aya sample not found at {sample}")
    sections = {
        "experiment": {"name": "gen-tiny", "seeds": [0]},
        "data": {"dataset": "aya", "path": str(sample), "num_clients": 8, "max_train_per_client": 6,
                 "max_test_per_client": 3, "max_length": 48},
        "generation": {"max_new_tokens": 6},
        "model": {"name": "tiny-llama"},
        "base_model": {"kind": "standard-fl", "mode": "lora", "rounds": 2, "local_epochs": 1, "batch_size": 4,
                       "lr": 1e-3},
        "federation": {"fraction": 0.3, "min_clients": 2, "checkpoint_every": 1},
        "fedp2eft": {"rounds": 2, "r_init": 4, "lora_alpha": 8, "local_epochs": 1, "batch_size": 4},
        "fedl2p": {"rounds": 1, "outer_steps": 1, "batch_pairs": 2},
        "pf2lora": {"rounds": 1, "steps": 2, "batch_size": 4},
        "personalise": {"methods": METHODS, "budgets": [2], "epochs": 1, "batch_size": 4, "lr": 1e-3},
        "tuned": {"lrs": [1e-3, 1e-2]},
    }
    for key, value in extra.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.integration
def test_every_method_personalises_a_causal_lm_in_process(tmp_path):
    cfg = aya_config(tmp_path / "gen.toml", tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "fedp2eft", "run", str(cfg), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=python_env(tmp_path), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "meteor" and results["metrics"] == ["meteor", "rouge1", "rougeL"]
    runs = {(r["method"], r["pool"]): r for r in results["runs"]}
    assert set(runs) == {(m, p) for m in METHODS for p in ("seen", "unseen")}
    for run in runs.values():
        assert set(run["metrics"]) == {"meteor", "rouge1", "rougeL"}
        assert run["per_language"] == run["metrics"]["meteor"]["per_language"]
        for metric in run["metrics"].values():
            assert all(0 <= v["value"] <= 1 and v["n"] >= 1 for v in metric["per_language"].values())
        # each test row's scores, with its language where the client speaks several (the row bootstrap's input)
        for client in run["per_client"].values():
            assert {m: len(v) for m, v in client["rows"].items()} == {m: client["n"] for m in run["metrics"]}
            assert len(client.get("row_languages", [client["language"]] * client["n"])) == client["n"]
        rows = sum(c["n"] for c in run["per_client"].values())
        assert rows == sum(v["n"] for v in run["per_language"].values())
    assert any("row_languages" in c for r in runs.values() for c in r["per_client"].values())  # mixed clients
    # the Standard-FL LoRA base of a causal LM: merged, no classifier head written
    meta = json.loads((out / "base_model" / "model" / "fedp2eft_classifier.json").read_text())
    assert meta["mode"] == "lora" and "num_labels" not in meta
    assert not (out / "base_model" / "model" / "head.safetensors").exists()
    # the PSG's λ covers every decoder linear layer but the output projection
    md = (out / "results.md").read_text()
    assert "r = 2: rougeL" in md and "r = 2: meteor" in md
    assert "| lora − none |" in md and "bootstrap over rows" in md


@pytest.mark.integration
def test_causal_lm_stages_on_the_simulation_engine(tmp_path):
    from test_engines import ray_env

    cfg = aya_config(tmp_path / "gen.toml", tmp_path, **{"federation.engine": "simulation",
                                                          "personalise.methods": ["fedp2eft"],
                                                          "personalise.pools": ["unseen"]})
    out = tmp_path / "sim"
    proc = subprocess.run([sys.executable, "-m", "fedp2eft", "run", str(cfg), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=ray_env(tmp_path), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("base_model", "psg/seed0"):
        rounds = [json.loads(x) for x in (out / stage / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [1, 2] and all(not r["failed"] for r in rounds)
    assert json.loads((out / "results.json").read_text())["runs"][0]["method"] == "fedp2eft"


@pytest.mark.integration
def test_causal_lm_base_and_psg_on_the_deployment_engine(tmp_path):
    from fedp2eft.config import load_config
    from fedp2eft.setup.federation import load_federation
    from test_engines import _alive_in_group, _stop, loopback_deployment_env, start_loopback_federation

    env, link_port = loopback_deployment_env(tmp_path)
    cfg = aya_config(tmp_path / "deploy.toml", tmp_path, **{"federation.engine": "deployment",
                                                             "federation.fraction": 1.0, "base_model.rounds": 1,
                                                             "fedp2eft.rounds": 1, "data.num_clients": 4,
                                                             "data.unseen_clients": [2, 3]})
    seen = [c.cid for c in load_federation(load_config(cfg)).pool("seen")]
    assert len(seen) == 2
    out = tmp_path / "deploy-out"
    bindir = Path(sys.executable).parent
    procs = []
    try:
        start_loopback_federation(tmp_path, env, link_port, seen, procs)
        for stage, folder in (("base", "base_model"), ("psg", "psg/seed0")):
            run = subprocess.run([str(bindir / "flwr"), "run", str(REPO), "loopback", "--stream", "--run-config",
                                  f'config="{cfg}" out="{out}" stage="{stage}"'], capture_output=True, text=True,
                                 timeout=600, env=env, cwd=REPO)
            assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
            rounds = [json.loads(x) for x in (out / folder / "rounds.jsonl").read_text().splitlines()]
            assert [r["round"] for r in rounds] == [1]
            assert sorted(rounds[0]["sampled"]) == sorted(seen) and not rounds[0]["failed"]
        assert (out / "psg" / "seed0" / "psg.safetensors").is_file()
    finally:
        _stop(procs)
    assert not any(_alive_in_group(p.pid) for p in procs)
