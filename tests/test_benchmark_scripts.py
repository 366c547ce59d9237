"""Benchmark scripts that the suite would otherwise never run (issue 10):

- benchmarks/psg_rounds.py (accuracy against PSG rounds) on a tiny model and real MasakhaNEWS rows: a
  variant's PSG is trained with snapshots, a run's own PSG snapshots are scored, a LoRA reference sits
  beside them, and a second call resumes without retraining or rescoring;
- benchmarks/lambda_client_signal.py on synthetic PSG round logs: a planted per-client λ is found,
  pure noise is not, and a malformed log is refused by name."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

from fedp2eft.cli import main as cli_main
from fl_helpers import REPO, tiny_overrides


def load_script(name="psg_rounds"):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
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
    with pytest.raises(SystemExit, match="--stage-snapshots lora: not a method with a federated stage"):
        script.main(["configs/quickstart.toml", "--pools", "unseen", "--stage-snapshots", "lora", *set_args])


def synthetic_rounds(path, client_sd, noise_sd=0.003, rounds=60, clients=16, per_round=4):
    """A PSG log: λ drifts with the round, each client adds its own offset (SD client_sd) plus noise;
    the FFN up-projections sit at 1.7x the other modules."""
    rng = random.Random(0)
    offset = {f"c{i:02d}": rng.gauss(0, client_sd) for i in range(clients)}
    lines = []
    for rnd in range(1, rounds + 1):
        drift = 1.0 + 0.01 * rnd
        recs = {}
        for c in rng.sample(sorted(offset), per_round):
            lam = drift + offset[c] + rng.gauss(0, noise_sd)
            recs[c] = {"lambda_hat_mean": drift, "lambda_mean": lam, "lambda_mean_query": lam,
                       "lambda_mean_ffn_up": 1.7 * lam}
        lines.append(json.dumps({"round": rnd, "clients": recs}))
    path.write_text("\n".join(lines) + "\n")


def test_lambda_client_signal_finds_a_planted_client_lambda_and_not_noise(tmp_path, capsys):
    script = load_script("lambda_client_signal")
    synthetic_rounds(tmp_path / "signal.jsonl", client_sd=0.02)
    synthetic_rounds(tmp_path / "noise.jsonl", client_sd=0.0)
    assert script.main([str(tmp_path / "signal.jsonl"), "--json", str(tmp_path / "signal.json")]) == 0
    assert "client visits" in capsys.readouterr().out
    signal = json.loads((tmp_path / "signal.json").read_text())
    s = signal["client_signal"]["lambda_mean"]
    assert s["clients"] == 16 and s["client_means_sd"] > 4 * s["noise_only_sd"]
    assert 0.01 < s["client_means_sd"] < 0.04  # the planted 0.02, up to 16 clients' sampling error
    assert abs(signal["module_type_levels"]["ffn_up"] / signal["module_type_levels"]["query"] - 1.7) < 1e-6
    noise = script.analyse(script.read_rounds(tmp_path / "noise.jsonl", 1))["client_signal"]["lambda_mean"]
    assert noise["client_means_sd"] < 2 * noise["noise_only_sd"]
    assert noise["within_client_sd"] == pytest.approx(0.003, rel=0.25)
    # the per-visit move is λ − λ̂: the planted offsets plus noise, centred on 0
    assert abs(signal["per_visit_move"]["mean"]) < 0.01
    (tmp_path / "bad.jsonl").write_text('{"round": 1}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:1: not a round record"):
        script.main([str(tmp_path / "bad.jsonl")])
    with pytest.raises(SystemExit, match="missing.jsonl: no such rounds file"):
        script.main([str(tmp_path / "missing.jsonl")])
    with pytest.raises(SystemExit, match="no rounds with clients from round 99"):
        script.main([str(tmp_path / "noise.jsonl"), "--from-round", "99"])


def test_width_free_structure_compares_selections_on_a_psg_report(tmp_path, capsys):
    """benchmarks/width_free_structure.py (issue 26, item 4) on a synthetic λ report for tiny-bert: λ that
    grows with width keeps the widest modules; the width-free selection finds the ranks each language's
    clients share; a folder without a report is refused by name."""
    import torch
    from safetensors.torch import save_file

    from fedp2eft.models import load_classifier
    from fedp2eft.psg import feature_modules

    script = load_script("width_free_structure")
    base, _ = load_classifier("tiny-bert", 7)
    names = feature_modules(base, "adapter")
    widths = {n: base.get_submodule(n).weight.shape[0] for n in names}
    wide = max(widths.values())
    narrow = [n for n in names if widths[n] < wide]
    folder = tmp_path / "psg" / "seed0"
    folder.mkdir(parents=True)
    (folder / "lambda_report.json").write_text(json.dumps({"modules": names}))
    lams = {}
    for lang, favoured in (("aa", narrow[0]), ("bb", narrow[1])):
        for k in range(3):
            lam = torch.stack([torch.full((4,), 0.5 * (widths[n] / wide) ** 0.5) for n in names])
            lam[names.index(favoured)] = 0.6 * (widths[favoured] / wide) ** 0.5 * 4  # the language's own module
            lam += 1e-3 * torch.rand(lam.shape, generator=torch.Generator().manual_seed(k))
            lams[f"{lang}-seen-{k:02d}"] = lam
    save_file(lams, str(folder / "lambdas_seen.safetensors"))
    out = tmp_path / "structure.json"
    assert script.main([str(folder), "--budget", "1", "--model", "tiny-bert", "--out", str(out)]) == 0
    seen = json.loads(out.read_text())["results"][0]["pools"]["seen"]
    assert seen["width-free"]["jaccard_within_language"] > seen["width-free"]["jaccard_between_languages"]
    assert seen["lambda"]["clients"] == 6 and sum(seen["lambda"]["type_share"].values()) == pytest.approx(1.0)
    assert "width-free" in capsys.readouterr().out
    assert script.main([str(tmp_path / "nothing"), "--model", "tiny-bert"]) == 2
    assert "lambda_report.json: missing" in capsys.readouterr().err


def test_round_cost_times_every_named_stage_against_the_psg(tmp_path, masakhanews_dir, capsys):
    """benchmarks/round_cost.py on tiny-bert and real rows: every named stage (a stage that needs the PSG
    included) runs one client round; ratios are to the PSG's; an unknown stage is refused by name."""
    script = load_script("round_cost")
    sets = tiny_overrides(masakhanews_dir, **{"fedp2eft.r_init": 2, "fedp2eft.lora_alpha": 4,
                                               "fedp2eft.batch_size": 8, "fedl2p.batch_pairs": 1,
                                               "fedl2p.outer_steps": 1, "fedl2p.parameterisation": '"log"'})
    args = [x for s in sets for x in ("--set", s)]
    out = tmp_path / "cost.json"
    assert script.main(["configs/quickstart.toml", "--stages", "psg,fedp2eft-step,fedl2p", "--clients", "1",
                        "--budget", "1", "--out", str(out), *args]) == 0
    stages = json.loads(out.read_text())["stages"]
    assert set(stages) == {"psg", "fedp2eft-step", "fedl2p"}
    assert stages["psg"]["ratio_to_psg"] == 1.0 and all(s["seconds_per_client"] > 0 for s in stages.values())
    assert "x the PSG's" in capsys.readouterr().out
    assert script.main(["configs/quickstart.toml", "--stages", "psg,nope", *args]) == 2
    assert "unknown federated stage 'nope'" in capsys.readouterr().err


def test_psg_rounds_scores_the_step_heads_snapshots(tmp_path, masakhanews_dir):
    """psg_rounds.py --stage-snapshots on a per-budget stage (fedp2eft-step, issue 26): each snapshot of the
    step head a run kept is scored on held-out train rows, beside the LoRA reference."""
    out = tmp_path / "run"
    sets = tiny_overrides(masakhanews_dir, **{
        "experiment.output_dir": json.dumps(str(out)), "base_model.kind": '"off-the-shelf"',
        "personalise.methods": '["fedp2eft-step"]', "personalise.pools": '["unseen"]', "personalise.budgets": "[1]",
        "fedp2eft.rounds": 1, "fedp2eft.r_init": 2, "fedp2eft.lora_alpha": 4, "fedp2eft.batch_size": 8,
        "fedp2eft_step.rounds": 2, "fedp2eft_step.snapshot_every": 1})
    set_args = [x for s in sets for x in ("--set", s)]
    assert cli_main(["run", "configs/quickstart.toml", *set_args]) == 0
    script = load_script()
    assert script.main(["configs/quickstart.toml", "--pools", "unseen", "--budget", "1",
                        "--stage-snapshots", "fedp2eft-step", *set_args]) == 0
    curves = json.loads((out / "psg_rounds" / "accuracy_vs_rounds.json").read_text())
    entry = curves["fedp2eft-step (run)"]
    assert sorted(entry["accuracy"]["unseen"], key=int) == ["1", "2"]
    assert 0 <= entry["lora"]["unseen"] <= 1
