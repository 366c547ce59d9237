"""Integration: the quickstart pipeline on real MasakhaNEWS with the rebuilt e5-small, reduced for CI:
a Standard-FL base model (4 rounds instead of 12), then LoRA and "none" personalisation."""

from __future__ import annotations

import json

import pytest

from conftest import require_packaged
from fedp2eft.cli import main


@pytest.mark.integration
def test_quickstart_reduced_lora_beats_none(tmp_path, masakhanews_dir, capsys):
    require_packaged("e5-small")
    out = tmp_path / "qs"
    code = main([
        "run", "configs/quickstart.toml", "--out", str(out),
        "--set", f"data.path={json.dumps(str(masakhanews_dir))}",
        "--set", "data.languages=['hau','swa','yor']",
        "--set", "data.max_train_per_client=48",
        "--set", "data.max_test_per_client=48",
        "--set", "data.max_length=48",
        "--set", "personalise.pools=['seen']",
        "--set", "base_model.rounds=4",
        "--set", "federation.eval_every=0",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "seen clients, r = 2" in printed
    res = json.loads((out / "results.json").read_text())
    means = {r["method"]: r["mean"] for r in res["runs"]}
    assert set(means) == {"none", "lora"}
    assert all(0.0 <= v <= 1.0 for v in means.values())
    assert means["lora"] > means["none"], means
    rounds = (out / "base_model" / "rounds.jsonl").read_text().splitlines()
    assert len(rounds) == 4  # the quickstart personalises a Standard-FL base model
    assert (out / "base_model" / "model" / "fedp2eft_classifier.json").is_file()
