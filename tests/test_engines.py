"""The same job on Flower's Simulation Engine (Ray) and Deployment Engine (SuperLink + SuperNodes),
on loopback only."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fl_helpers import REPO, free_port, python_env, tiny_overrides

NON_LOOPBACK = re.compile(r'sin_addr=inet_addr\("(?!127\.)(?!0\.0\.0\.0)([0-9.]+)"\)|'
                          r'sin6_addr=inet_pton\(AF_INET6, "(?!::1")(?!::ffff:127\.)([^"]+)"\)')


def ray_env(tmp_path) -> dict:
    env = python_env(tmp_path)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
    env.update({"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "FEDP2EFT_HOME": os.environ.get("FEDP2EFT_HOME", str(Path.home() / ".cache" / "fedp2eft"))})
    return env


@pytest.mark.integration
def test_ray_simulation_smoke_touches_loopback_only(tmp_path, masakhanews_dir):
    if shutil.which("strace") is None:
        pytest.fail("strace is needed (bash scripts/setup.sh installs it)")
    out = tmp_path / "sim"
    sets = tiny_overrides(masakhanews_dir, languages=("hau",), clients=1, rounds=2,
                          **{"federation.engine": '"simulation"', "federation.min_clients": 1})
    # 2 clients (hau-seen-00, hau-unseen-00): one trains each round, both are Ray virtual nodes
    cmd = [sys.executable, "-m", "fedp2eft", "run", "configs/quickstart.toml", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    trace = tmp_path / "connect.trace"
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace), *cmd],
                          capture_output=True, text=True, timeout=900, env=ray_env(tmp_path), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rounds = [json.loads(x) for x in (out / "base_model" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2] and all(not r["failed"] for r in rounds)
    assert (out / "base_model" / "model" / "fedp2eft_classifier.json").is_file()
    text = trace.read_text()
    assert "connect(" in text  # strace really saw the run's sockets
    bad = sorted({m.group(0) for m in NON_LOOPBACK.finditer(text)})
    assert not bad, f"non-loopback connections: {bad}"


def _start(cmd, log: Path, env, cwd) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def _wait_port(port: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def _alive_in_group(pgid: int) -> list[int]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp
            alive.append(int(stat.parent.name))
    return alive


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive_in_group(p.pid) for p in procs):
        time.sleep(0.5)
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=10)


def loopback_deployment_env(tmp_path) -> tuple[dict, int]:
    """An environment whose FLWR_HOME names a SuperLink on 127.0.0.1 (``flwr run . loopback``), and its port."""
    env = python_env(tmp_path)
    env["FEDP2EFT_HOME"] = os.environ.get("FEDP2EFT_HOME", str(Path.home() / ".cache" / "fedp2eft"))
    flwr_home = Path(env["FLWR_HOME"])
    flwr_home.mkdir(parents=True)
    link_port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    return env, link_port


def start_loopback_federation(tmp_path, env, link_port: int, client_ids: list[str], procs: list) -> None:
    """A SuperLink and one SuperNode per client id on loopback, each appended to ``procs`` as it starts
    (so a caller's ``finally: _stop(procs)`` stops whatever did start); returns once all listen."""
    bindir = Path(sys.executable).parent
    procs.append(_start([str(bindir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                         str(link_port), "--database", str(tmp_path / "link.db")], tmp_path / "link.log", env, tmp_path))
    _wait_port(link_port)
    node_ports = [free_port() for _ in client_ids]
    for i, cid in enumerate(client_ids):
        procs.append(_start([str(bindir / "flower-supernode"), "--insecure", "--superlink",
                             f"127.0.0.1:{link_port}", "--port", str(node_ports[i]),
                             "--node-config", f'client-id="{cid}"'], tmp_path / f"node{i}.log", env, tmp_path))
    for port in node_ports:
        _wait_port(port)


@pytest.mark.integration
def test_deployment_engine_on_loopback(tmp_path, masakhanews_dir):
    env, link_port = loopback_deployment_env(tmp_path)
    config = tmp_path / "deploy.toml"
    sets = tiny_overrides(masakhanews_dir, languages=("hau",), clients=2, rounds=1,
                          **{"federation.engine": '"deployment"', "federation.fraction": 1.0,
                             "fedp2eft.rounds": 1, "fedp2eft.r_init": 4, "fedp2eft.lora_alpha": 8,
                             "fedp2eft.batch_size": 8})
    config.write_text(_toml(sets))
    out = tmp_path / "deploy-out"
    bindir = Path(sys.executable).parent
    procs = []
    try:
        start_loopback_federation(tmp_path, env, link_port, ["hau-seen-00", "hau-seen-01"], procs)
        run = subprocess.run([str(bindir / "flwr"), "run", str(REPO), "loopback", "--stream", "--run-config",
                              f'config="{config}" out="{out}"'], capture_output=True, text=True, timeout=600,
                             env=env, cwd=REPO)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        rounds = [json.loads(x) for x in (out / "base_model" / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [1]
        assert all(sorted(r["sampled"]) == ["hau-seen-00", "hau-seen-01"] and not r["failed"] for r in rounds)
        assert (out / "base_model" / "model" / "fedp2eft_classifier.json").is_file()
        # FedP²EFT's PSG on the same SuperLink and SuperNodes, starting from that base model
        run = subprocess.run([str(bindir / "flwr"), "run", str(REPO), "loopback", "--stream", "--run-config",
                              f'config="{config}" out="{out}" stage="psg"'], capture_output=True, text=True,
                             timeout=600, env=env, cwd=REPO)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        rounds = [json.loads(x) for x in (out / "psg" / "seed0" / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [1] and all(r["l1"] >= 0 for r in rounds)
        assert (out / "psg" / "seed0" / "psg.safetensors").is_file()
        # the base model again through SecAgg+ (Flower's workflow and client mod) on the same SuperNodes
        secure = tmp_path / "secure-out"
        run = subprocess.run([str(bindir / "flwr"), "run", str(REPO), "loopback", "--stream", "--run-config",
                              f'config="{config}" out="{secure}" set="federation.secure_aggregation=true"'],
                             capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        rounds = [json.loads(x) for x in (secure / "base_model" / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [1] and all(r["secure_aggregation"] for r in rounds)
        plain, masked = (_final_state(o / "base_model") for o in (out, secure))
        diff = max(float((plain[k].double() - masked[k].double()).abs().max()) for k in plain)
        # the same round from the same state: FedAvg's aggregate within SecAgg+'s quantisation error, 2 updates
        # of 16 rows each rounded on a grid of 16 / 2^22 after scaling by 16 / 1000: <= 2.4e-4
        assert 0 < diff <= 2.4e-4, diff
    finally:
        _stop(procs)
    assert not any(_alive_in_group(p.pid) for p in procs)


def _final_state(stage_folder: Path) -> dict:
    from safetensors.torch import load_file

    meta = json.loads((stage_folder / "checkpoint" / "checkpoint.json").read_text())
    return load_file(str(stage_folder / "checkpoint" / meta["state_file"]))


def _toml(sets: list[str]) -> str:
    sections: dict[str, list[str]] = {}
    for item in sets:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        if not value.startswith(("[", '"')) and not re.fullmatch(r"[-+0-9.e]+|true|false", value):
            value = json.dumps(value)
        sections.setdefault(section, []).append(f"{name} = {value}")
    return "\n".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())
