"""What a user sees from ``fedp2eft run`` with output piped to a file, and what Ctrl-C and a resume do:
one line per round and per client (elapsed and what remains), no wrapped paths, no "± SD" with one
seed, the written files listed; SIGINT exits 130 and SIGTERM 143 with a clean message (whatever signal
dispositions the test process inherited) and the next run resumes from
the checkpoint's round; a folder that is not a run is not resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from fl_helpers import REPO, python_env, tiny_overrides


def cli(tmp_path, out, *extra_sets, rounds=2, **sets):
    sets = tiny_overrides(tmp_path.parent / "unused", **{"base_model.rounds": rounds, **sets})
    args = [sys.executable, "-m", "fedp2eft", "run", "configs/quickstart.toml", "--out", str(out)]
    return args + [x for s in [*sets, *extra_sets] for x in ("--set", s)]


def data_set(masakhanews_dir) -> str:
    return f"data.path={json.dumps(str(masakhanews_dir))}"


def test_piped_output_has_a_line_per_round_and_client_and_lists_the_files(tmp_path, masakhanews_dir):
    out = tmp_path / "a-folder-with-a-rather-long-name-so-that-paths-would-wrap-at-eighty-columns" / "run"
    args = cli(tmp_path, out, data_set(masakhanews_dir), 'personalise.methods=["none","lora"]',
               "federation.eval_every=1", 'federation.eval_pool="seen"')
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=python_env(tmp_path), cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    err, printed = proc.stderr, proc.stdout
    assert "2 languages" in err and "1 languages" not in err
    assert "round 1/2: 2 clients" in err and "round 2/2: 2 clients" in err and "elapsed" in err and "left" in err
    assert "eval (seen pool" in err  # the base model's federated evaluation is shown, not only in rounds.jsonl
    assert "seed 0 seen lora r=2: client 1/4" in err and "~" in err and "client 4/4" in err
    assert str(out / "base_model" / "checkpoint") in err  # a path is never wrapped
    assert "±" not in printed  # one seed: no "± 0.0"
    assert "seen clients, r = 2" in printed
    assert "written by this run:" in printed and str(out / "results.json") in printed
    assert str(out / "base_model" / "model") in printed


def _stderr_pump(proc, needle: str) -> tuple[list[str], threading.Event, threading.Thread]:
    """Collect ``proc``'s stderr lines in the background; the event fires at ``needle`` (or at the end)."""
    seen: list[str] = []
    hit = threading.Event()

    def pump():
        for line in proc.stderr:
            seen.append(line)
            if needle in line:
                hit.set()
        hit.set()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return seen, hit, thread


def _default_signals() -> None:
    """The child's dispositions whatever launched the tests: a non-interactive shell's ``&`` starts its jobs
    with SIGINT ignored, which the child would inherit (and Python then installs no Ctrl-C handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code,said", [(signal.SIGINT, 130, "interrupted:"),
                                           (signal.SIGTERM, 143, "terminated (SIGTERM):")], ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_cleanly_and_the_next_run_resumes_from_its_round(tmp_path, masakhanews_dir, sig, code, said):
    out = tmp_path / "run"
    args = cli(tmp_path, out, data_set(masakhanews_dir), rounds=40)
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=python_env(tmp_path), cwd=REPO, preexec_fn=_default_signals)
    seen, hit, pump = _stderr_pump(proc, "round 3/40")
    hit.wait(300)
    assert "round 3/40" in "".join(seen), "".join(seen)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    pump.join(timeout=30)
    err = "".join(seen)
    assert proc.returncode == code, err
    assert said in err and "resume" in err
    assert "terminate called" not in err and "Traceback" not in err
    done = json.loads((out / "base_model" / "checkpoint" / "checkpoint.json").read_text())["round"]
    assert done >= 3
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=python_env(tmp_path), cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert f"resuming from round {done} of 40" in again.stderr
    assert f"round {done + 1}/40" in again.stderr and f"round {done}/40" not in again.stderr


def test_version_resume_refusal_and_the_untrained_head_warning(tmp_path, masakhanews_dir):
    env = python_env(tmp_path)
    version = subprocess.run([sys.executable, "-m", "fedp2eft", "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("fedp2eft 0.")
    stray = tmp_path / "photos"
    stray.mkdir()
    (stray / "cat.jpg").write_bytes(b"x")
    refused = subprocess.run([sys.executable, "-m", "fedp2eft", "run", "configs/quickstart.toml", "--resume", str(stray)],
                             capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert refused.returncode == 2 and "not a run folder" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert sorted(p.name for p in stray.iterdir()) == ["cat.jpg"]
    args = cli(tmp_path, tmp_path / "ots", data_set(masakhanews_dir), 'base_model.kind="off-the-shelf"',
               "none.trains_head=false")
    warned = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert warned.returncode == 0 and "warning: method 'none'" in warned.stderr


def test_data_describe_fits_80_columns_without_cutting_anything(tmp_path, masakhanews_dir):
    env = {**python_env(tmp_path), "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "fedp2eft", "data", "describe", "configs/quickstart.toml",
                           "--set", data_set(masakhanews_dir)], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines) and "…" not in proc.stdout
    assert any(line.split()[:2] == ["amh-unseen-00", "unseen"] for line in lines if line.strip())
    assert "16 clients, 4 main languages, 7 labels" in proc.stdout
