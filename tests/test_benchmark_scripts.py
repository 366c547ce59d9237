"""Every script in benchmarks/ runs here, in its fast mode where it trains or times anything (issues 10, 31):
a script added to the folder without a test fails ``test_every_benchmark_script_is_run_by_a_test``.

- benchmarks/psg_rounds.py (accuracy against PSG rounds) on a tiny model and real MasakhaNEWS rows: a
  variant's PSG is trained with snapshots, a run's own PSG snapshots are scored, a LoRA reference sits
  beside them, and a second call resumes without retraining or rescoring;
- benchmarks/lambda_client_signal.py on synthetic PSG round logs: a planted per-client λ is found,
  pure noise is not, and a malformed log is refused by name."""

from __future__ import annotations

import importlib.util
import json
import random
import sys

import pytest
import torch

from fedp2eft.cli import main as cli_main
from fl_helpers import REPO, tiny_overrides

COVERED: dict[str, list[str]] = {}  # script name -> the tests that run it


def covers(*scripts: str):
    def mark(test):
        for name in scripts:
            COVERED.setdefault(name, []).append(test.__name__)
        return test
    return mark


@pytest.fixture(autouse=True)
def keep_threads():
    """A script sets torch's thread count (its --threads, or the config's): restored for the next test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def set_args(sets: list[str]) -> list[str]:
    return [x for s in sets for x in ("--set", s)]


def load_script(name="psg_rounds"):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a script's dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@covers("psg_rounds")
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


@covers("lambda_client_signal")
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


@covers("width_free_structure")
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


@covers("round_cost")
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


@covers("psg_rounds")
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


def test_every_benchmark_script_is_run_by_a_test():
    scripts = {p.stem for p in (REPO / "benchmarks").glob("*.py")}
    assert not scripts - COVERED.keys(), f"benchmarks/ scripts no test runs: {sorted(scripts - COVERED.keys())}"
    assert not COVERED.keys() - scripts, f"tests name scripts that are gone: {sorted(COVERED.keys() - scripts)}"


@covers("engine_overhead")
def test_engine_overhead_runs_the_same_rounds_bare_and_on_the_engine(tmp_path, masakhanews_dir, capsys):
    """Issue 31: the script crashed on ``job["num_clients"]``; in fast mode both sides run 2 rounds and must end
    with identical weights."""
    script = load_script("engine_overhead")
    out = tmp_path / "overhead.json"
    assert script.main(["--fast", "--threads", "1", "--data", str(masakhanews_dir), "--out", str(out)]) == 0
    job = json.loads(out.read_text())["jobs"]["tiny-bert-full"]
    assert job["rounds"] == 2 and job["clients"] > 0 and len(job["bare_loop_s"]) == len(job["inprocess_engine_s"]) == 1
    assert job["ratio"] == pytest.approx(job["median_engine_s"] / job["median_bare_s"], rel=1e-2)
    assert job["max_abs_weight_difference"] == 0.0
    assert "ratio" in capsys.readouterr().out
    assert script.main(["--jobs", "nope", "--out", str(out)]) == 2


@covers("cost")
def test_cost_measures_each_client_round_in_its_own_process_and_merges_only(tmp_path, capsys):
    script = load_script("cost")
    out = tmp_path / "cost.json"
    assert script.main(["--fast", "--only", "lora,fedl2p", "--out", str(out)]) == 0
    first = json.loads(out.read_text())
    assert set(first["client_round"]) == {"lora", "fedl2p"} and first["round_ratio_fedl2p_over_fedp2eft"] is None
    assert script.main(["--fast", "--only", "fedp2eft,pf2lora", "--out", str(out)]) == 0
    cost = json.loads(out.read_text())
    rounds = cost["client_round"]
    assert set(rounds) == {"lora", "fedp2eft", "fedl2p", "pf2lora"} and rounds["lora"] == first["client_round"]["lora"]
    for r in rounds.values():
        assert r["seconds"] > 0 and r["peak_rss_mib"] >= r["rss_before_mib"] > 0 and r["rows"] == 8
    assert cost["round_ratio_fedl2p_over_fedp2eft"] == pytest.approx(rounds["fedl2p"]["seconds"] / rounds["fedp2eft"]["seconds"])
    assert cost["step"]["rank"] == 2 and cost["step"]["ratio_bt_over_lora"] > 0
    pay = cost["payload"]
    assert 0 < pay["psg_parameters"] < pay["base_parameters"] and pay["percent"] == pytest.approx(
        100 * pay["psg_parameters"] / pay["base_parameters"])
    assert cost["baseline_payloads"]["fedl2p_parameters"] > 0 and cost["baseline_payloads"]["pf2lora_parameters"] > 0
    assert "FedL2P / FedP²EFT client-round time" in capsys.readouterr().out
    assert script.main(["--fast", "--only", "nope", "--out", str(out)]) == 2
    assert "unknown client round 'nope'" in capsys.readouterr().err


@covers("generation_cost")
def test_generation_cost_serves_lora_and_a_pruned_fedp2eft_adapter(tmp_path, capsys):
    from conftest import shared_data_dir

    if not (shared_data_dir() / "aya" / "aya_sample.jsonl").is_file():
        pytest.skip("shared Aya sample not found")
    run = tmp_path / "gen"
    sets = ['model.name="tiny-llama"', "fedp2eft.rounds=1", "fedp2eft.r_init=4", "fedp2eft.lora_alpha=8",
            "data.max_length=48", "generation.max_new_tokens=4", "experiment.threads=1", "data.max_train_per_client=4"]
    assert cli_main(["run", "configs/generation_quickstart.toml", "--out", str(run), *set_args(sets),
                     "--set", "personalise.methods=['fedp2eft']", "--set", "personalise.pools=['unseen']"]) == 0
    script = load_script("generation_cost")
    out = tmp_path / "gen_cost.json"
    args = ["--config", "configs/generation_quickstart.toml", "--run", str(run), "--fast", *set_args(sets)]
    assert script.main([*args, "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"base", "lora", "fedp2eft"}
    assert rows["base"]["adapter_params"] == 0 and rows["lora"]["adapter_params"] > 0
    assert 0 < rows["fedp2eft"]["adapted_modules"] <= rows["lora"]["adapted_modules"]
    assert len({r["client"] for r in rows.values()}) == 1 and all(r["seconds"] > 0 for r in rows.values())
    assert "FedP²EFT / LoRA" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="fedp2eft: .*psg.safetensors: missing"):
        script.main(["--config", "configs/generation_quickstart.toml", "--run", str(tmp_path / "none"), "--fast",
                     *set_args(sets)])


@covers("memory")
def test_memory_measures_a_round_and_the_quickstart_with_each_allocator(tmp_path, capsys):
    from fedp2eft.memory import find_allocator

    script = load_script("memory")
    out = tmp_path / "memory.json"
    assert script.main(["--fast", "--threads", "1", "--methods", "lora", "--out", str(out)]) == 0
    mem = json.loads(out.read_text())
    modes = {"system (reference)"} | ({"preloaded allocator"} if find_allocator() else set())
    assert set(mem["client_round"]["lora"]) == modes and mem["model_mb"] > 0
    assert all(m["peak_mb"] > mem["model_mb"] and m["seconds"] > 0 for m in mem["client_round"]["lora"].values())
    assert len(mem["quickstart"]) == 1 and next(iter(mem["quickstart"].values()))["peak_mb"] > 0
    assert len(mem["quickstart without gradient checkpointing"]) == 1  # the previous set-up, timed beside it
    assert "quickstart" in capsys.readouterr().out
    assert script.main(["--fast", "--methods", "nope", "--out", str(out)]) == 2


@covers("precision")
def test_precision_times_both_precisions_and_pairs_every_methods_accuracy(tmp_path, masakhanews_dir, capsys):
    """Issue 28: the kernel timed at fp32 and bf16, and two whole runs (resumable) whose every run is paired."""
    script = load_script("precision")
    out, work = tmp_path / "precision.json", tmp_path / "work"
    sets = ["--set", f'data.path="{masakhanews_dir}"', "--set", 'data.languages=["hau","swa"]',
            "--set", 'personalise.methods=["none","lora"]', "--set", 'personalise.pools=["unseen"]']
    assert script.main(["--fast", "--threads", "1", "--work", str(work), "--out", str(out), *sets]) == 0
    entry = next(iter(json.loads(out.read_text())["measurements"].values()))["quickstart-fast"]
    assert set(entry["kernel"]["speed_ratio"]) == {"forward", "forward_backward"}
    assert all(v > 0 for v in entry["kernel"]["speed_ratio"].values())
    runs = entry["runs"]
    assert {(r["method"], r["pool"]) for r in runs["accuracy"]} == {("none", "unseen"), ("lora", "unseen")}
    for r in runs["accuracy"]:
        assert r["delta"] == pytest.approx(r["bf16"] - r["fp32"], abs=0.02) and len(r["interval"]) == 2
        # the seed-noise reference: fp32 on another base seed, and the verdict it enters
        assert "seed_noise_delta" in r and isinstance(r["within_noise"], bool)
    assert runs["wall_s"]["fp32"] > 0 and runs["parts"] == {"fp32": 1, "bf16": 1, "fp32-other-seed": 1}
    other = json.loads((work / "fp32-other-seed" / "results.json").read_text())
    assert other["config"]["base_model"]["seed"] == 1 and other["config"]["experiment"]["precision"] == "fp32"
    assert runs["bf16_within_noise"] == all(r["within_noise"] for r in runs["accuracy"])
    bf16 = json.loads((work / "bf16" / "results.json").read_text())
    assert bf16["config"]["experiment"]["precision"] == "bf16"
    assert "fp32 / bf16 time" in capsys.readouterr().out
    # finished runs are read back, not run again
    assert script.main(["--fast", "--threads", "1", "--work", str(work), "--out", str(out), *sets]) == 0
    assert json.loads((work / "fp32" / "timing.json").read_text())["parts_s"] == [runs["wall_s"]["fp32"]]
    # two finished folders compared (the paper protocol's fp32 and bf16 federation 0), and rendered
    assert script.main(["--compare", str(work / "fp32"), str(work / "bf16"), "--name", "pair", "--out", str(out)]) == 0
    pair = [e["pair"] for e in json.loads(out.read_text())["measurements"].values() if "pair" in e][0]
    assert [(r["method"], r["delta"]) for r in pair["runs"]["accuracy"]] == \
        [(r["method"], r["delta"]) for r in runs["accuracy"]]
    with pytest.raises(SystemExit, match="fp32 folder then a bf16"):
        script.main(["--compare", str(work / "bf16"), str(work / "fp32"), "--out", str(out)])
    render = load_script("render")
    text = render.precision(tmp_path)
    assert "| pair | – | – | – |" in text and "quickstart-fast" not in text  # fast entries stay out of the docs


@covers("speedups")
def test_speedups_measures_attention_compile_and_sorted_evaluation_on_real_rows(tmp_path, masakhanews_dir, capsys):
    """Issue 28: eager against SDPA attention, torch.compile (its first step and steady state) and
    length-sorted evaluation, each against today's path, with the predictions compared."""
    script = load_script("speedups")
    out = tmp_path / "speedups.json"
    sets = ["--set", f'data.path="{masakhanews_dir}"', "--set", 'data.languages=["hau","swa"]']
    assert script.main(["--fast", "--threads", "1", "--out", str(out), *sets]) == 0
    entry = next(iter(json.loads(out.read_text())["measurements"].values()))["masakhanews_paper-fast"]
    assert entry["attention"]["ratio_eager_over_sdpa"] > 0 and entry["batches"] == 2
    assert entry["compile"]["first_step_s"] > 0 and entry["compile"]["ratio_eager_over_compiled"] > 0
    e = entry["sorted_evaluation"]
    assert e["same_predictions"] is True and e["padded_tokens"]["sorted"] <= e["padded_tokens"]["in_order"]
    assert e["tokens"] <= e["padded_tokens"]["sorted"] and e["rows"] > 0
    assert "length-sorted evaluation" in capsys.readouterr().out


@covers("replicates")
def test_replicates_runs_each_seed_and_method_as_its_own_job_and_waits_for_what_a_job_needs(tmp_path,
                                                                                        masakhanews_dir, capsys):
    """Issue 26: two federations, four methods, two 1-thread slots: the base job first, fedp2eft-step after
    the fedp2eft job that trains its PSG, every run in one results.json; a second run starts nothing new."""

    script = load_script("replicates")
    jobs = script.plan([0, 1], ["lora", "fedp2eft-step", "none", "fedp2eft"], script.DEFAULT_ORDER)
    assert [(j.seed, j.method) for j in jobs[:4]] == [(0, "none"), (0, "fedp2eft"), (0, "fedp2eft-step"), (0, "lora")]
    assert jobs[0].base and jobs[2].needs == ["none", "fedp2eft"] and jobs[1].needs == ["none"]
    with pytest.raises(SystemExit, match="--methods: unknown method 'bogus'"):
        script.plan([0], ["none", "bogus"], script.DEFAULT_ORDER)  # before any job starts
    sets = tiny_overrides(masakhanews_dir, rounds=1, **{
        "experiment.replicate": '"federation"', "personalise.budgets": "[1]", "fedp2eft.rounds": 1,
        "fedp2eft.r_init": 2, "fedp2eft.lora_alpha": 4, "fedp2eft.batch_size": 8, "fedp2eft_step.rounds": 1,
        "fedp2eft_step.snapshot_every": 0})
    out = tmp_path / "out"
    argv = ["configs/quickstart.toml", "--out", str(out), "--seeds", "0", "1", "--poll", "0.2", "--cwd", str(REPO),
            "--methods", "none", "lora", "fedp2eft", "fedp2eft-step"]
    for s in sets:
        argv += ["--set", s]
    assert script.main(argv) == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert {(r["seed"], r["method"]) for r in res["runs"]} == {(s, m) for s in (0, 1)
                                                            for m in ("none", "lora", "fedp2eft", "fedp2eft-step")}
    assert {r["seed"]: r["base"] for r in res["runs"]}[0] != {r["seed"]: r["base"] for r in res["runs"]}[1]
    assert printed.splitlines()[0].endswith("seed 0 none: started on 2 thread(s)")  # the base first, on both slots
    step = printed.index("seed 0 fedp2eft-step: started")
    assert printed.index("seed 0 fedp2eft: done") < step  # waited for the PSG
    assert (out / "jobs" / "0-fedp2eft-step.log").is_file()
    assert script.main(argv) == 0  # again: every job resumes to "nothing to do"
    assert len(json.loads((out / "results.json").read_text())["runs"]) == len(res["runs"])


@covers("replicates")
def test_replicates_stops_its_running_jobs_on_sigterm_and_says_how_to_resume(tmp_path, masakhanews_dir):
    """A SIGTERM to the driver reaches every running job (each stops as the CLI does: checkpoint kept)."""
    import signal
    import subprocess
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "replicates.py"), "configs/quickstart.toml", "--out", str(out),
           "--seeds", "0", "--methods", "none", "--poll", "0.2", "--cwd", str(REPO)]
    for s in tiny_overrides(masakhanews_dir, rounds=200):
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    log = out / "jobs" / "0-none.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and "round 2/200" in log.read_text()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "run the same command again to resume" in stderr
    assert "terminated (SIGTERM)" in log.read_text()  # the job got it and stopped cleanly
    assert (out / "base_model" / "checkpoint").is_dir()


@covers("step_targets")
def test_step_targets_puts_the_step_heads_linearised_sweep_beside_a_real_one(tmp_path, masakhanews_dir, capsys):
    """Issue 26: per rate, the real fine-tuning's held-out accuracy and loss, and every other rate's update
    rescaled to it; the linearised row of a rate at its own rate is the real fine-tuning."""
    script = load_script("step_targets")
    out = tmp_path / "step_targets.json"
    sets = ["--set", f'data.path="{masakhanews_dir}"', "--set", 'data.languages=["hau","swa"]']
    assert script.main(["configs/quickstart.toml", "--fast", "--threads", "1", "--clients", "2", "--rates", "1e-2",
                        "1e-3", "--out", str(out), *sets]) == 0
    r = json.loads(out.read_text())
    assert r["rates"] == [1e-3, 1e-2] and r["clients"] == 2
    assert {c["language"] for c in r["per_client"]} == {"hau", "swa"}  # one client per language first
    for i, rate in enumerate(r["rates"]):
        lin = r["linearised_from"][f"{rate:g}"]
        assert lin["loss"][i] == r["real"]["loss"][i] and lin["accuracy"][i] == r["real"]["accuracy"][i]
        assert lin["picks"] in r["rates"]
    assert all(sum(v.values()) == 2 for v in r["clients_picking"].values())
    assert r["pool_picks"]["by_accuracy"] in r["rates"] and "pool picks" in capsys.readouterr().out


@covers("base_curve")
def test_base_curve_scores_each_snapshot_of_a_standard_fl_base_on_rows_it_never_trained_on(tmp_path, xnli_dir,
                                                                                          capsys):
    """Issue 28: the XNLI config's base on tiny data, 2 rounds with a snapshot each; both pools' train rows
    scored per snapshot, local steps counted from rounds.jsonl; a second run scores nothing again."""
    script = load_script("base_curve")
    out = tmp_path / "curve"
    argv = ["--fast", "--threads", "1", "--every", "1", "--out-dir", str(out), "--set", f'data.path="{xnli_dir}"',
            "--set", 'data.languages=["en","sw"]', "--set", 'base_model.kind="standard-fl"',
            "--set", "base_model.rounds=2", "--set", "federation.min_clients=1"]
    assert script.main(argv) == 0
    curve = json.loads((out / "base_curve.json").read_text())
    assert sorted(curve["points"], key=int) == ["1", "2"] and curve["chance"] == pytest.approx(33.33)
    first, second = curve["points"]["1"], curve["points"]["2"]
    assert 0 < first["local_steps"] < second["local_steps"]
    assert all(0 <= p["accuracy"][pool] <= 100 for p in (first, second) for pool in ("seen", "unseen"))
    assert (out / "base_curve.png").is_file() and (out / "base_model" / "model").is_dir()
    assert "round    2" in capsys.readouterr().out
    assert script.main(argv) == 0 and "round" not in capsys.readouterr().out  # nothing scored again
    assert script.main([*argv, "--set", 'base_model.kind="dept"']) == 2


@covers("render")
def test_render_prints_the_tables_of_the_committed_results(tmp_path):
    script = load_script("render")
    out = tmp_path / "tables.md"
    assert script.main(["--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("## MasakhaNEWS (small)", "### FedP²EFT − LoRA", "### Six methods at r = 2",
                    "## Longer PSG training (seed 0)", "## Cost", "| one client's federated round (s) |"):
        assert heading in text, heading
    assert text.count("\n| ") > 50


@covers("render")
def test_the_docs_blocks_equal_what_the_committed_results_render(tmp_path, capsys):
    """Every figure block the renderer owns in README.md and BENCHMARKS.md is what the committed results
    files give; a changed result, or a hand-edited block, fails here until ``render.py --write``."""
    script = load_script("render")
    assert script.main(["--check"]) == 0, capsys.readouterr().out
    doc = tmp_path / "doc.md"
    doc.write_text("x\n<!-- render:privacy -->\nhand-edited\n<!-- /render:privacy -->\ny\n")
    assert script.main(["--check", "--docs", str(doc)]) == 1 and "doc.md:privacy" in capsys.readouterr().out
    assert script.main(["--write", "--docs", str(doc)]) == 0
    assert script.main(["--check", "--docs", str(doc)]) == 0 and "hand-edited" not in doc.read_text()


@pytest.fixture(scope="module")
def tiny_fedp2eft_pf2lora_run(tmp_path_factory, masakhanews_dir):
    """A tiny MasakhaNEWS run with FedP²EFT (PSG snapshots every round) and PF2LoRA at r = 1."""
    out = tmp_path_factory.mktemp("stages") / "run"
    sets = tiny_overrides(masakhanews_dir, **{
        "base_model.kind": '"off-the-shelf"', "personalise.methods": '["fedp2eft","pf2lora"]',
        "personalise.pools": '["unseen"]', "personalise.budgets": "[1]", "fedp2eft.rounds": 2,
        "fedp2eft.snapshot_every": 1, "fedp2eft.r_init": 2, "fedp2eft.lora_alpha": 4, "fedp2eft.batch_size": 8,
        "pf2lora.rounds": 1, "pf2lora.steps": 2, "pf2lora.batch_size": 8, "experiment.threads": 1})
    assert cli_main(["run", "configs/quickstart.toml", "--out", str(out), *set_args(sets)]) == 0
    return out, sets


@covers("psg_trajectory")
def test_psg_trajectory_follows_lambda_over_a_runs_snapshots(tmp_path, tiny_fedp2eft_pf2lora_run):
    run, sets = tiny_fedp2eft_pf2lora_run
    script = load_script("psg_trajectory")
    states = sorted((run / "psg" / "seed0" / "snapshots").glob("*.safetensors"))
    out = tmp_path / "trajectory.json"
    assert script.main([*map(str, states), "--config", "configs/quickstart.toml", "--fast", *set_args(sets),
                        "--out", str(out)]) == 0
    traj = json.loads(out.read_text())
    assert [s["round"] for s in traj["states"]] == [1, 2] and traj["clients"] == 4
    for s in traj["states"]:
        assert s["mean"] > 0 and s["sd_over_ranks"] >= 0 and s["cv_over_ranks"] == pytest.approx(s["sd_over_ranks"] / s["mean"])
    assert script.main([str(tmp_path / "missing.safetensors"), "--fast"]) == 2


@covers("pf2lora_shared_only")
def test_pf2lora_shared_only_scores_level_one_without_personalisation(tmp_path, tiny_fedp2eft_pf2lora_run):
    run, sets = tiny_fedp2eft_pf2lora_run
    script = load_script("pf2lora_shared_only")
    args = ["--config", "configs/quickstart.toml", "--run", str(run), "--seed", "0", "--fast", *set_args(sets)]
    assert script.main([*args, "--budget", "1"]) == 0
    result = json.loads((run / "pf2lora_shared_only_seed0_r1.json").read_text())
    for pool in ("seen", "unseen"):
        assert set(result[pool]) == {"base", "level1"} and all(0 <= v <= 1 for v in result[pool].values())
    assert script.main([*args, "--budget", "3"]) == 2


@covers("lambda_structure")
def test_lambda_structure_trains_stage_one_on_one_client(tmp_path):
    script = load_script("lambda_structure")
    out = tmp_path / "structure.json"
    assert script.main(["--config", "configs/quickstart.toml", "--language", "hau", "--fast", "--epochs", "1,2",
                        "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["client"].startswith("hau-seen") and [r["epochs"] for r in res["results"]] == [1, 2]
    one, two = res["results"]
    assert two["steps"] == 2 * one["steps"] >= 2 and all(r["min"] <= r["mean"] <= r["max"] for r in res["results"])


@pytest.fixture(scope="module")
def tiny_xnli_root(tmp_path_factory, xnli_dir):
    """XNLI runs as ``benchmarks/xnli_pfl.toml`` lays them out: ``<root>/feddpa-t/`` (a FedDPA-T base, tiny)."""
    root = tmp_path_factory.mktemp("xnli_pfl")
    sets = tiny_overrides(xnli_dir, languages=("de", "sw"), **{
        "data.dataset": '"xnli"', "data.train_per_pool": 60, "data.test_per_pool": 12,
        "base_model.kind": '"feddpa-t"', "fedp2eft.rounds": 1, "fedp2eft.r_init": 2, "fedp2eft.lora_alpha": 4,
        "fedp2eft.batch_size": 8, "personalise.batch_size": 8, "personalise.methods": '["none","lora","fedp2eft"]',
        "personalise.pools": '["seen","unseen"]', "personalise.budgets": "[2]", "experiment.threads": 1})
    assert cli_main(["run", "configs/quickstart.toml", "--out", str(root / "feddpa-t"), *set_args(sets)]) == 0
    return root, sets


@covers("pfl_base_parts")
def test_pfl_base_parts_scores_the_shared_model_and_each_clients_base(tiny_xnli_root, capsys):
    root, sets = tiny_xnli_root
    script = load_script("pfl_base_parts")
    args = ["--root", str(root), "--config", "configs/quickstart.toml", *set_args(sets)]
    assert script.main(["feddpa-t", *args]) == 0
    parts = json.loads((root / "pfl_base_parts.json").read_text())["bases"]["feddpa-t"]
    for pool in ("seen", "unseen"):
        assert set(parts[pool]) == {"shared model alone", "each client's own base"}
        assert all(0 <= v <= 1 for v in parts[pool].values())
    # unseen clients have no part: their own base is the shared model
    assert parts["unseen"]["shared model alone"] == parts["unseen"]["each client's own base"]
    assert "feddpa-t seen: each client's own base" in capsys.readouterr().out
    assert script.main(["dept", *args]) == 2


@covers("xnli_pfl")
def test_xnli_pfl_merges_each_bases_runs_into_table_three(tiny_xnli_root, tmp_path, capsys):
    root, _ = tiny_xnli_root
    script = load_script("xnli_pfl")
    assert script.main(["--root", str(root)]) == 0
    merged = json.loads((root / "results.json").read_text())
    assert set(merged["bases"]) == {"feddpa-t"} and {r["base_kind"] for r in merged["runs"]} == {"feddpa-t"}
    assert {r["method"] for r in merged["runs"]} == {"none", "lora", "fedp2eft"}
    md = (root / "results.md").read_text()
    assert "| FedDPA-T | fedp2eft |" in md and "each client's majority train label" in md
    assert "ranks kept:" in md  # the PSG's λ summary
    assert script.main(["--root", str(tmp_path / "empty")]) == 2


@covers("learned_rates")
def test_learned_rates_puts_each_stages_rates_beside_the_validated_one(tmp_path, capsys):
    from fedp2eft.psg.rate_report import write_rate_report

    root = tmp_path / "run"
    for fed, rate in ((0, 6e-4), (1, 2e-3)):
        folder = root / f"federation{fed}" / "fedp2eft-step" / f"seed{fed}" / "r2"
        folder.mkdir(parents=True)
        write_rate_report(folder, {"unseen": {"a": {"ffn_up": rate}, "b": {"ffn_up": 4 * rate}}}, "step head")
    (root / "psg" / "seed0").mkdir(parents=True)  # a stage that learns no rate: ignored
    runs = [{"method": "lora-tuned", "pool": "unseen", "seed": s, "budget": 2, "selection": {"lr": lr}}
            for s, lr in ((0, 3e-3), (1, 1e-3))]
    runs.append({"method": "lora-tuned-client", "pool": "unseen", "seed": 0, "budget": 2,
                 "selection": {"lr": 3e-3, "per_client_lr": {"a": 1e-3, "b": 1e-2}}})
    (root / "results.json").write_text(json.dumps({"runs": runs}))
    script = load_script("learned_rates")
    assert script.main([str(root)]) == 0
    rows = json.loads((root / "learned_rates.json").read_text())["rows"]
    client = rows.pop(0)  # lora-tuned-client's own choices, summarised as a stage's
    assert client["stage"] == "lora-tuned-client" and client["geomean"] == pytest.approx(10 ** -2.5)
    assert client["min"] == 1e-3 and client["max"] == 1e-2 and client["lora_tuned_lr"] == 3e-3
    assert [(r["seed"], r["budget"], r["group"], r["lora_tuned_lr"]) for r in rows] == [
        (0, 2, "ffn_up", 3e-3), (1, 2, "ffn_up", 1e-3)]
    assert rows[0]["geomean"] == pytest.approx(2 * 6e-4) and rows[0]["sd_log10"] > 0  # two clients apart by 4x
    assert "| fedp2eft-step | 1 | 2 | ffn_up |" in capsys.readouterr().out
    assert script.main([str(tmp_path / "missing")]) == 2


@covers("privacy")
def test_privacy_measures_accuracy_against_epsilon_and_secagg_cost(tmp_path, masakhanews_dir, capsys):
    script = load_script("privacy")
    out = tmp_path / "privacy.json"
    assert script.main(["--fast", "--threads", "1", "--epsilons", "8", "--secagg-rounds", "2", "--work",
                        str(tmp_path / "work"), "--out", str(out), "--set",
                        f"data.path={json.dumps(str(masakhanews_dir))}"]) == 0
    result = json.loads(out.read_text())
    plain, private = result["dp"]
    assert plain["epsilon"] is None and set(plain["accuracy"]) == {"none", "lora"}
    assert private["target_epsilon"] == 8 and 0 < private["epsilon"] <= 8 and private["noise_multiplier"] > 0
    assert private["clipping_norm"] > 0  # the median round-1 update norm of the run without DP
    assert result["secagg"]["ratio"] > 0 and 0 < result["secagg"]["max_abs_difference_after_one_round"] < 1e-3
    assert "SecAgg+ / FedAvg seconds per round" in capsys.readouterr().out
