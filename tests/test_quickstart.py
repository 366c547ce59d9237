"""Integration: the quickstart pipeline on real MasakhaNEWS with the rebuilt e5-small, reduced for CI."""

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
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "seen clients, r = 2" in printed
    res = json.loads((out / "results.json").read_text())
    means = {r["method"]: r["mean"] for r in res["runs"]}
    assert set(means) == {"none", "lora"}
    assert all(0.0 <= v <= 1.0 for v in means.values())
    assert means["lora"] > means["none"], means
