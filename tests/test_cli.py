"""The ``fedp2eft`` command: bad input gives one line naming the input and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedp2eft.cli import main

TINY = ["--set", "model.name=tiny-bert", "--set", "data.clients_per_language=2",
        "--set", "data.max_train_per_client=8", "--set", "data.max_test_per_client=8",
        "--set", "data.max_length=16", "--set", "personalise.epochs=1"]


def data_set(path):
    return ["--set", f"data.path={json.dumps(str(path))}"]


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--set", "model.name=no-such-model"], "unknown model 'no-such-model'"),
        (["--set", "data.languages=['hau','klingon']"], "unknown language(s) ['klingon']"),
        (["--set", "personalise.budgets=[0]"], "personalise.budgets[0]: a rank budget must be >= 1"),
        (["--set", "data.clients_per_language=500"], "too few for 500 clients"),
        (["--set", "data.path='/nonexistent/masakhanews'"], "data path for 'masakhanews' not found"),
        (["--set", "personalise.lr=nan"], "personalise.lr: NaN"),
    ],
)
def test_run_bad_inputs(tmp_path, capsys, masakhanews_dir, extra, match):
    out = tmp_path / "out"
    code, err = run_cli(["run", "configs/quickstart.toml", "--out", str(out), *data_set(masakhanews_dir), *TINY, *extra],
                        capsys)
    assert code == 2
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and err[-1] == errors[0] and match in errors[0], err
    assert not (out / "results.json").exists()


def test_missing_config_and_unknown_packaged_model(capsys, tmp_path):
    code, err = run_cli(["run", str(tmp_path / "missing.toml")], capsys)
    assert code == 2 and err == [f"error: config file not found: {tmp_path / 'missing.toml'}"]
    code, err = run_cli(["prepare-models", "gpt-99"], capsys)
    assert code == 2 and "unknown packaged model 'gpt-99'" in err[0]


def test_resume_needs_an_existing_run(capsys, tmp_path):
    code, err = run_cli(["run", "configs/quickstart.toml", "--resume", str(tmp_path / "nope")], capsys)
    assert code == 2 and "no such run folder" in err[-1]


def test_describe_json(capsys, masakhanews_dir):
    code = main(["data", "describe", "configs/quickstart.toml", "--json", *data_set(masakhanews_dir)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["languages"]) == ["amh", "hau", "swa", "yor"]
    hau = summary["languages"]["hau"]
    assert len(hau["seen"]) == 2 and len(hau["unseen"]) == 2
    assert all(sum(c["train_labels"]) == c["train"] for c in hau["seen"])


def test_tiny_run_writes_results_and_resumes(tmp_path, masakhanews_dir):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "fedp2eft", "run", "configs/quickstart.toml", "--out", str(out),
            *data_set(masakhanews_dir), *TINY, "--set", "data.languages=['hau','yor']", "--set", "experiment.seeds=[0,1]"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["metric"] == "accuracy" and "torch" in res["environment"]["packages"]
    assert {(r["method"], r["budget"], r["pool"], r["seed"]) for r in res["runs"]} == {
        (m, b, p, s) for m, b in (("none", None), ("lora", 2)) for p in ("seen", "unseen") for s in (0, 1)
    }
    run = res["runs"][0]
    assert set(run["per_language"]) == {"hau", "yor"} and all(v["n"] > 0 for v in run["per_language"].values())
    assert "| hau |" in (out / "results.md").read_text()
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "resuming: 8 of 8 runs" in again.stderr
    changed = subprocess.run(args + ["--set", "personalise.lr=0.5"], capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2 and "different data/model/training settings" in changed.stderr
