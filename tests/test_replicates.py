"""Replicates that vary the federation (issue 26, item 1), and the paired intervals of results.md."""

from __future__ import annotations

import json

from fedp2eft.cli import main
from fedp2eft.config import load_config
from fedp2eft.evaluation.paired import bootstrap_clients, mean_interval, paired_difference
from fedp2eft.report import device_name
from fedp2eft.setup.federation import load_federation
from fedp2eft.setup.replicates import replicate_config
from fl_helpers import tiny_overrides


def _args(data_dir, **sets):
    out = []
    for item in tiny_overrides(data_dir, **sets):
        out += ["--set", item]
    return out


def test_replicate_config_offsets_partition_base_and_fixed_a_only_for_federations(masakhanews_dir):
    sets = tiny_overrides(masakhanews_dir, **{"personalise.lora_a_seed": 42})
    cfg = load_config("configs/quickstart.toml", sets)
    assert replicate_config(cfg, 2) is cfg  # personalisation replicates: one federation
    fed_cfg = load_config("configs/quickstart.toml", [*sets, 'experiment.replicate="federation"'])
    c2 = replicate_config(fed_cfg, 2)
    assert (c2.data.partition_seed, c2.base_model.seed, c2.personalise.recipe.lora_a_seed) == (2, 2, 44)
    assert replicate_config(fed_cfg, 0).data == fed_cfg.data  # federation 0 is the shared one
    a, b = load_federation(replicate_config(fed_cfg, 0)), load_federation(c2)
    assert [c.cid for c in a.clients] == [c.cid for c in b.clients]
    assert [len(c.train) for c in a.clients] != [len(c.train) for c in b.clients] or \
        [r.text for r in a.clients[0].train] != [r.text for r in b.clients[0].train]


def test_federation_replicates_train_their_own_base_and_stages_and_say_so(tmp_path, capsys, masakhanews_dir):
    out = tmp_path / "run"
    sets = {"experiment.seeds": "[0, 1]", "experiment.replicate": '"federation"',
            "personalise.methods": '["none", "lora", "fedp2eft"]', "personalise.budgets": "[1]",
            "fedp2eft.rounds": 1, "fedp2eft.r_init": 2, "fedp2eft.lora_alpha": 4, "fedp2eft.batch_size": 8}
    code = main(["run", "configs/quickstart.toml", "--out", str(out), *_args(masakhanews_dir, rounds=1, **sets)])
    assert code == 0, capsys.readouterr().err
    prints = []
    for s in (0, 1):
        fed = out / f"federation{s}"
        meta = json.loads((fed / "base_model" / "model" / "fedp2eft_classifier.json").read_text())
        prints.append(meta["fingerprint"])
        recorded = json.loads((fed / "base_model" / "settings.json").read_text())
        assert recorded["data"]["partition_seed"] == s and recorded["base_model"]["seed"] == s
        assert (fed / "psg" / f"seed{s}" / "psg.safetensors").is_file()
    assert prints[0] != prints[1]  # two base model instances
    assert not (out / "base_model").exists()
    res = json.loads((out / "results.json").read_text())
    assert {r["replicate"] for r in res["runs"]} == {"federation"}
    assert all(r["device"]["name"] == device_name() and r["device"]["threads"] >= 1 for r in res["runs"])
    assert {r["seed"]: r["base"] for r in res["runs"]} == {0: prints[0], 1: prints[1]}
    for r in res["runs"]:  # per-client records sum to the per-language pooled values
        total = sum(c["n"] for c in r["per_client"].values())
        assert total == sum(v["n"] for v in r["per_language"].values())
    md = (out / "results.md").read_text()
    assert "2 federations" in md and "lora − none" in md and "fedp2eft − lora" in md and "none − lora" not in md
    assert all(len(c["rows"]["accuracy"]) == c["n"] for r in res["runs"] for c in r["per_client"].values())
    assert "bootstrap over rows" in md
    # the same command again: nothing retrained, nothing re-run
    capsys.readouterr()
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *_args(masakhanews_dir, rounds=1, **sets)]) == 0
    assert "resuming: 6 of 6 runs" in capsys.readouterr().err
    # a personalisation-replicate config may not merge into these runs
    other = {**sets, "experiment.replicate": '"personalisation"'}
    assert main(["run", "configs/quickstart.toml", "--out", str(out), *_args(masakhanews_dir, rounds=1, **other)]) == 2
    assert "experiment.replicate" in capsys.readouterr().err


def _run(method, seed, clients, mean=None):
    per_client = {cid: {"language": lang, "n": n, "sums": {"accuracy": s}} for cid, (lang, n, s) in clients.items()}
    langs = {}
    for lang, n, s in clients.values():
        a = langs.setdefault(lang, [0.0, 0])
        a[0] += s
        a[1] += n
    per_language = {k: {"value": s / n, "n": n} for k, (s, n) in langs.items()}
    m = sum(v["value"] for v in per_language.values()) / len(per_language)
    return {"method": method, "budget": 2, "pool": "seen", "seed": seed, "mean": m if mean is None else mean,
            "per_language": per_language, "per_client": per_client}


def test_paired_difference_intervals():
    assert mean_interval([1.0]) == (1.0, None, None)
    m, lo, hi = mean_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and abs(hi - 2.0 - 4.303 / 3 ** 0.5) < 1e-3 and abs(2.0 - lo - (hi - 2.0)) < 1e-12
    ref = {"a": ("x", 10, 5.0), "b": ("x", 10, 6.0), "c": ("y", 10, 4.0), "d": ("y", 10, 7.0)}
    better = {k: (lang, n, s + 2.0) for k, (lang, n, s) in ref.items()}  # +20 points on every client
    runs = [_run("lora", 0, ref), _run("m", 0, better), _run("lora", 1, ref), _run("m", 1, better)]
    d = paired_difference(runs, "m", "lora", "seen", 2)
    assert d["n"] == 2 and abs(d["mean"] - 0.2) < 1e-12 and abs(d["boot_low"] - 0.2) < 1e-9
    assert abs(d["boot_high"] - 0.2) < 1e-9 and abs(d["t_low"] - 0.2) < 1e-9 and abs(d["t_high"] - 0.2) < 1e-9
    mixed = {"a": ("x", 10, 9.0), "b": ("x", 10, 2.0), "c": ("y", 10, 4.0), "d": ("y", 10, 7.0)}
    lo, hi = bootstrap_clients([(_run("m", 0, mixed), _run("lora", 0, ref))])
    assert lo < 0 < hi  # one client better, one worse: the interval spans 0
    assert paired_difference(runs, "m", "adalora", "seen", 2) is None
    old = [{k: v for k, v in r.items() if k != "per_client"} for r in runs]  # runs from before per_client
    assert paired_difference(old, "m", "lora", "seen", 2)["boot_low"] is None


def _rows_run(method, clients):
    """A run from per-row scores: ``clients`` = {cid: (language, [score per row], row languages or None)}."""
    per_client, pooled = {}, {}
    for cid, (lang, rows, row_langs) in clients.items():
        rec = {"language": lang, "n": len(rows), "sums": {"meteor": sum(rows)}, "rows": {"meteor": rows}}
        if row_langs:
            rec["row_languages"] = row_langs
        per_client[cid] = rec
        for rl, v in zip(row_langs or [lang] * len(rows), rows, strict=True):
            pooled.setdefault(rl, []).append(v)
    per_language = {k: {"value": sum(v) / len(v), "n": len(v)} for k, v in pooled.items()}
    mean = sum(v["value"] for v in per_language.values()) / len(per_language)
    return {"method": method, "budget": 2, "pool": "seen", "seed": 0, "mean": mean, "per_language": per_language,
            "per_client": per_client}


def test_the_row_bootstrap_resamples_rows_within_their_language_for_few_clients():
    """Issue 28: Fed-Aya's pools have a handful of clients, each speaking several languages; the interval over
    rows finds a uniform gain the one over clients cannot (one client per language), and spans 0 where rows
    disagree."""
    from fedp2eft.evaluation.paired import bootstrap_rows

    ref = _rows_run("none", {"c0": ("mixed", [0.2, 0.4, 0.3, 0.5, 0.1, 0.6], ["ar", "ar", "ar", "te", "te", "te"]),
                             "c1": ("zh", [0.3, 0.2, 0.4, 0.5], None)})
    up = _rows_run("lora", {cid: (c["language"], [v + 0.05 for v in c["rows"]["meteor"]], c.get("row_languages"))
                            for cid, c in ref["per_client"].items()})
    lo, hi = bootstrap_rows([(up, ref)], "meteor")
    assert abs(lo - 0.05) < 1e-9 and abs(hi - 0.05) < 1e-9  # every row +0.05: no spread
    d = paired_difference([up, ref], "lora", "none", "seen", 2, "meteor")
    assert abs(d["rows_low"] - 0.05) < 1e-9 and abs(d["mean"] - 0.05) < 1e-9
    noisy = _rows_run("lora", {"c0": ("mixed", [0.5, 0.1, 0.3, 0.2, 0.4, 0.6], ["ar", "ar", "ar", "te", "te", "te"]),
                               "c1": ("zh", [0.1, 0.4, 0.6, 0.3], None)})
    lo, hi = bootstrap_rows([(noisy, ref)], "meteor")
    assert lo < 0 < hi
    fewer = _rows_run("lora", {"c1": ("zh", [0.3, 0.2, 0.4, 0.5], None)})
    assert bootstrap_rows([(fewer, ref)], "meteor") is None  # different rows: nothing to pair
    assert bootstrap_rows([(_run("m", 0, {"a": ("x", 10, 5.0)}), _run("lora", 0, {"a": ("x", 10, 5.0)}))]) is None


def test_results_md_gives_the_cost_per_client_and_fine_tunings():
    from fedp2eft.report import console_table, markdown_tables

    ref = {"a": ("x", 10, 5.0), "b": ("x", 10, 6.0)}
    runs = [{**_run(m, s, ref), "seconds": 40.0 + s, "clients": 2} for m in ("lora", "lora-tuned", "none")
            for s in (0, 1)]
    for r in runs:
        if r["method"] == "none":
            r["budget"] = None
    results = {"config": {"experiment": {"replicate": "federation"},
                          "personalise": {"tune_lrs": [1e-3, 3e-3, 1e-2], "none_trains_head": False}}, "runs": runs}
    md = markdown_tables(results)
    assert "2 federations" in md and "| lora-tuned | 20.2 | 4 |" in md and "| none | 20.2 | 0 |" in md
    assert "| lora | 20.2 | 1 |" in md and "lora-tuned − lora | 2 | +0.0" in md
    titles = [t.title for t in console_table(results)]
    assert titles[-1] == "Cost of personalisation" and len(titles) == 2
