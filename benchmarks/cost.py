"""Cost of FedP²EFT on one client (FedP²EFT Table 6 analogue), e5-small on a MasakhaNEWS client.

1. One federated round on one client: FedP²EFT (features, BT-LoRA stage 1 at r_init, 10 L1 PSG
   steps) vs plain LoRA fine-tuning of the same data (same epochs, batch, rank r_init): latency and
   peak RSS, each measured in a fresh subprocess.
2. One training step of BT-LoRA vs one of peft LoRA at the same rank (median over steps; target
   ratio <= 1.10).
3. The PSG payload (what a FedP²EFT client sends per round) as % of the base model's parameters.
4. One federated round on the same client of FedL2P (features, 3 outer steps of LoRA fine-tuning at
   the budget + IFT/Neumann hypergradient; paper Table 6: FedP²EFT 8.3x faster) and of PF2LoRA
   (10 upper steps, each after one lower step, at the budget), with their payloads.

    .venv/bin/python benchmarks/cost.py [--rank 16] [--budget 2] [--rows 64] [--steps 20] [--only fedl2p,pf2lora]

Writes ``benchmarks/results/cost.json`` (``--only`` re-measures the named client rounds and keeps
the rest of the file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "masakhanews"

ROUND_CODE = r"""
import json, resource, sys, time, torch
torch.set_num_threads(2)
from fedp2eft.data import load_dataset_by_name, build_federation, FederationSpec
from fedp2eft.methods import ClientTask, TrainSettings
from fedp2eft.training.batches import encode
from fedp2eft.methods.bt_training import BTSettings
from fedp2eft.methods.fedp2eft import PSGSettings, new_psg, psg_client_update
from fedp2eft.methods.lora import LoRAMethod
from fedp2eft.models import load_classifier
what, rank, rows, data, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
ds = load_dataset_by_name("masakhanews", data, ["hau"])
client = build_federation(ds, FederationSpec(clients_per_language=1)).pool("seen")[0]
base, tok = load_classifier("e5-small", ds.num_labels)
task = ClientTask(client.cid, "hau", encode(tok, client.train[:rows], 64), encode(tok, client.test[:8], 64))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if what == "fedp2eft":
    psg = new_psg(base, rank)
    psg_client_update(base, dict(psg.state_dict()), task, PSGSettings(bt=BTSettings(r_init=rank, lora_alpha=2 * rank, batch_size=16)))
elif what == "fedl2p":
    from fedp2eft.methods.fedl2p import FedL2PSettings, fedl2p_client_update, new_lr_generator
    s = FedL2PSettings(budget=budget, epochs=2, batch_size=16)
    fedl2p_client_update(base, dict(new_lr_generator(base, s.base_lr).state_dict()), task, s)
elif what == "pf2lora":
    import tempfile
    from fedp2eft.methods.pf2lora import PF2LoRASettings, initial_shared_state, pf2lora_client_update
    s = PF2LoRASettings(budget=budget, batch_size=16, steps=10)
    pf2lora_client_update(base, initial_shared_state(base, s), task, s, tempfile.mkdtemp())
else:
    LoRAMethod().personalise(base, task, rank, TrainSettings(epochs=2, batch_size=16))
secs = time.perf_counter() - t
print(json.dumps({"seconds": secs, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mib": before / 1024}))
"""


def client_round(what: str, rank: int, rows: int, budget: int = 2) -> dict:
    out = subprocess.run([sys.executable, "-c", ROUND_CODE, what, str(rank), str(rows), str(DATA), str(budget)],
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_times(rank: int, steps: int) -> dict:
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from torch.nn import functional as F

    from fedp2eft.adapters import bt_penalty
    from fedp2eft.adapters.bt_lora import bt_lora_config
    from fedp2eft.models import load_classifier
    from fedp2eft.training import linear_module_names

    torch.set_num_threads(2)
    base, tok = load_classifier("e5-small", 7)
    targets = linear_module_names(base)
    enc = tok(["habari za leo, hii ni sentensi ya majaribio"] * 16, padding="max_length", max_length=64,
              truncation=True, return_tensors="pt")
    y = torch.zeros(16, dtype=torch.long)
    models = {
        "lora": get_peft_model(copy.deepcopy(base), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)),
        "bt_lora": get_peft_model(copy.deepcopy(base), bt_lora_config(targets, r=rank, lora_alpha=2 * rank)),
    }
    times: dict[str, list[float]] = {k: [] for k in models}
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for k, m in models.items()}
    for i in range(steps + 3):
        for name in (("lora", "bt_lora") if i % 2 == 0 else ("bt_lora", "lora")):
            m = models[name]
            t = time.perf_counter()
            loss = F.cross_entropy(m(enc["input_ids"], enc["attention_mask"]), y)
            if name == "bt_lora":
                loss = loss + bt_penalty(m, 64)
            opts[name].zero_grad()
            loss.backward()
            opts[name].step()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"rank": rank, "steps": steps, "median_step_s": med, "ratio_bt_over_lora": med["bt_lora"] / med["lora"]}


def payload(rank: int) -> dict:
    from fedp2eft.methods.fedp2eft import new_psg
    from fedp2eft.models import load_classifier

    base, _ = load_classifier("e5-small", 7)
    psg = new_psg(base, rank)
    n_psg = sum(p.numel() for p in psg.parameters())
    n_base = sum(p.numel() for p in base.parameters())
    return {"psg_parameters": n_psg, "base_parameters": n_base, "percent": 100 * n_psg / n_base,
            "r_init": rank, "adapted_modules": psg.num_modules}


def baseline_payloads(budget: int) -> dict:
    from fedp2eft.methods.fedl2p import new_lr_generator
    from fedp2eft.methods.pf2lora import PF2LoRASettings, initial_shared_state
    from fedp2eft.models import load_classifier

    base, _ = load_classifier("e5-small", 7)
    n_base = sum(p.numel() for p in base.parameters())
    n_gen = sum(p.numel() for p in new_lr_generator(base, 1e-4).parameters())
    n_pf = sum(v.numel() for v in initial_shared_state(base, PF2LoRASettings(budget=budget)).values())
    return {"fedl2p_parameters": n_gen, "fedl2p_percent": 100 * n_gen / n_base,
            "pf2lora_parameters": n_pf, "pf2lora_percent": 100 * n_pf / n_base, "budget": budget}


def main() -> None:
    from fedp2eft.atomic import write_json
    from fedp2eft.report import environment

    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=16, help="r_init of FedP²EFT and the LoRA rank compared")
    ap.add_argument("--rows", type=int, default=64, help="train rows of the client")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--budget", type=int, default=2, help="rank budget FedL2P and PF2LoRA train at")
    ap.add_argument("--only", default="", help="comma-separated client rounds to re-measure (lora,fedp2eft,fedl2p,pf2lora)")
    args = ap.parse_args()
    path = HERE / "results" / "cost.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    names = [w for w in args.only.split(",") if w] or ["lora", "fedp2eft", "fedl2p", "pf2lora"]
    rounds = dict(previous.get("client_round", {}))
    rounds.update({w: client_round(w, args.rank, args.rows, args.budget) for w in names})
    steps = previous["step"] if args.only and "step" in previous else step_times(args.rank, args.steps)
    pay = previous["payload"] if args.only and "payload" in previous else payload(args.rank)
    ratio = lambda a, b: rounds[a]["seconds"] / rounds[b]["seconds"] if a in rounds and b in rounds else None  # noqa: E731
    result = {"client_round": rounds,
              "round_ratio_fedp2eft_over_lora": ratio("fedp2eft", "lora"),
              "round_ratio_fedl2p_over_fedp2eft": ratio("fedl2p", "fedp2eft"),
              "round_ratio_pf2lora_over_lora": ratio("pf2lora", "lora"),
              "step": steps, "payload": pay, "baseline_payloads": baseline_payloads(args.budget),
              "environment": environment(), "args": vars(args),
              "measured_together": names}
    write_json(path, result)
    print(f"client round ({args.rows} rows, 2 epochs): LoRA {rounds['lora']['seconds']:.1f} s / "
          f"{rounds['lora']['peak_rss_mib']:.0f} MiB, FedP²EFT {rounds['fedp2eft']['seconds']:.1f} s / "
          f"{rounds['fedp2eft']['peak_rss_mib']:.0f} MiB")
    print(f"training step at r={args.rank}: peft LoRA {steps['median_step_s']['lora'] * 1000:.0f} ms, "
          f"BT-LoRA {steps['median_step_s']['bt_lora'] * 1000:.0f} ms, ratio {steps['ratio_bt_over_lora']:.3f} "
          "(target <= 1.10)")
    for w in ("fedl2p", "pf2lora"):
        if w in rounds:
            print(f"{w} client round (r={args.budget}): {rounds[w]['seconds']:.1f} s / {rounds[w]['peak_rss_mib']:.0f} MiB")
    if result["round_ratio_fedl2p_over_fedp2eft"]:
        print(f"FedL2P / FedP²EFT client-round time: {result['round_ratio_fedl2p_over_fedp2eft']:.2f} (paper: 8.3)")
    bp = result["baseline_payloads"]
    print(f"payloads: FedL2P generator {bp['fedl2p_parameters']:,} ({bp['fedl2p_percent']:.2f}%), "
          f"PF2LoRA level 1 + head {bp['pf2lora_parameters']:,} ({bp['pf2lora_percent']:.2f}%)")
    print(f"PSG payload: {pay['psg_parameters']:,} parameters = {pay['percent']:.2f}% of the base model's "
          f"{pay['base_parameters']:,}")


if __name__ == "__main__":
    main()
