"""benchmarks/psg_rounds.py (accuracy against PSG rounds, issue 10 item 5) on a tiny model and real
MasakhaNEWS rows: a variant's PSG is trained with snapshots, a run's own PSG snapshots are scored,
a LoRA reference sits beside them, and a second call resumes without retraining or rescoring."""

from __future__ import annotations

import importlib.util
import json

import pytest

from fedp2eft.cli import main as cli_main
from fl_helpers import REPO, tiny_overrides


def load_script():
    spec = importlib.util.spec_from_file_location("psg_rounds", REPO / "benchmarks" / "psg_rounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_psg_rounds_scores_a_variant_and_a_runs_snapshots_then_resumes(tmp_path, masakhanews_dir, capsys):
    out = tmp_path / "run"
    sets = tiny_overrides(masakhanews_dir, **{
        "experiment.output_dir": json.dumps(str(out)), "base_model.kind": '"off-the-shelf"',
        "personalise.methods": '["fedp2eft-paper"]', "personalise.pools": '["unseen"]',
        "fedp2eft_paper.rounds": 2, "fedp2eft_paper.snapshot_every": 1, "fedp2eft_paper.r_init": 4,
        "fedp2eft_paper.lora_alpha": 8, "fedp2eft_paper.local_epochs": 1, "fedp2eft_paper.batch_size": 8})
    set_args = [x for s in sets for x in ("--set", s)]
    # the run trains fedp2eft-paper's PSG and keeps a snapshot per round
    assert cli_main(["run", "configs/quickstart.toml", *set_args]) == 0
    assert sorted(p.name for p in (out / "psg-paper" / "seed0" / "snapshots").iterdir()) == [
        "round0001.safetensors", "round0002.safetensors"]

    script = load_script()
    args = ["configs/quickstart.toml", "--variant", "init1", "--rounds", "2", "--every", "1",
            "--pools", "unseen", "--stage-snapshots", "fedp2eft-paper", *set_args]
    assert script.main(args) == 0
    result_path = out / "psg_rounds" / "accuracy_vs_rounds.json"
    curves = json.loads(result_path.read_text())
    assert set(curves) == {"init1", "fedp2eft-paper (run)"}
    for name, entry in curves.items():
        assert sorted(entry["accuracy"]["unseen"], key=int) == ["1", "2"], name
        for acc in [*entry["accuracy"]["unseen"].values(), entry["lora"]["unseen"]]:
            assert 0.0 <= acc <= 1.0
    assert curves["init1"]["overrides"] == {"psg_init": 1.0}
    assert curves["init1"]["lora"] == curves["fedp2eft-paper (run)"]["lora"]  # one reference, same rows
    assert (out / "psg_rounds" / "init1" / "rounds.jsonl").read_text().count("\n") == 2
    assert (out / "psg_rounds" / "accuracy_vs_rounds.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "init1 round 2 unseen:" in printed and "fedp2eft-paper (run) round 1 unseen:" in printed

    # resumed: nothing retrained or rescored, the file's scores unchanged
    psg_bytes = (out / "psg_rounds" / "init1" / "psg.safetensors").read_bytes()
    assert script.main(args) == 0
    assert "round 1 unseen:" not in capsys.readouterr().out
    assert json.loads(result_path.read_text())["init1"]["accuracy"] == curves["init1"]["accuracy"]
    assert (out / "psg_rounds" / "init1" / "psg.safetensors").read_bytes() == psg_bytes

    # a method without a PSG stage is refused by name
    with pytest.raises(SystemExit, match="--stage-snapshots lora: not a method with a PSG stage"):
        script.main(["configs/quickstart.toml", "--pools", "unseen", "--stage-snapshots", "lora", *set_args])
