"""Cost of FedP²EFT on one client (FedP²EFT Table 6 analogue), e5-small on a MasakhaNEWS client.

1. One federated round on one client: FedP²EFT (features, BT-LoRA stage 1 at r_init, 10 L1 PSG
   steps) vs plain LoRA fine-tuning of the same data (same epochs, batch, rank r_init): latency and
   peak RSS, each measured in a fresh subprocess.
2. One training step of BT-LoRA vs one of peft LoRA at the same rank (median over steps; target
   ratio <= 1.10).
3. The PSG payload (what a FedP²EFT client sends per round) as % of the base model's parameters.

    .venv/bin/python benchmarks/cost.py [--rank 16] [--rows 64] [--steps 20]

Writes ``benchmarks/results/cost.json``. Later issues add FedL2P and PF2LoRA rows.
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
from fedp2eft.methods import ClientTask, TrainSettings, get_method
from fedp2eft.methods.batches import encode
from fedp2eft.methods.bt_training import BTSettings
from fedp2eft.methods.fedp2eft import PSGSettings, new_psg, psg_client_update
from fedp2eft.methods.lora import LoRAMethod
from fedp2eft.models import load_classifier
what, rank, rows, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ds = load_dataset_by_name("masakhanews", data, ["hau"])
client = build_federation(ds, FederationSpec(clients_per_language=1)).pool("seen")[0]
base, tok = load_classifier("e5-small", ds.num_labels)
task = ClientTask(client.cid, "hau", encode(tok, client.train[:rows], 64), encode(tok, client.test[:8], 64))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if what == "fedp2eft":
    psg = new_psg(base, rank)
    psg_client_update(base, dict(psg.state_dict()), task, PSGSettings(bt=BTSettings(r_init=rank, lora_alpha=2 * rank, batch_size=16)))
else:
    LoRAMethod().personalise(base, task, rank, TrainSettings(epochs=2, batch_size=16))
secs = time.perf_counter() - t
print(json.dumps({"seconds": secs, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mib": before / 1024}))
"""


def client_round(what: str, rank: int, rows: int) -> dict:
    out = subprocess.run([sys.executable, "-c", ROUND_CODE, what, str(rank), str(rows), str(DATA)],
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
    from fedp2eft.methods.training import linear_module_names
    from fedp2eft.models import load_classifier

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


def main() -> None:
    from fedp2eft.atomic import write_json
    from fedp2eft.report import environment

    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=16, help="r_init of FedP²EFT and the LoRA rank compared")
    ap.add_argument("--rows", type=int, default=64, help="train rows of the client")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    rounds = {w: client_round(w, args.rank, args.rows) for w in ("lora", "fedp2eft")}
    steps = step_times(args.rank, args.steps)
    pay = payload(args.rank)
    result = {"client_round": rounds,
              "round_ratio_fedp2eft_over_lora": rounds["fedp2eft"]["seconds"] / rounds["lora"]["seconds"],
              "step": steps, "payload": pay, "environment": environment(), "args": vars(args)}
    write_json(HERE / "results" / "cost.json", result)
    print(f"client round ({args.rows} rows, 2 epochs): LoRA {rounds['lora']['seconds']:.1f} s / "
          f"{rounds['lora']['peak_rss_mib']:.0f} MiB, FedP²EFT {rounds['fedp2eft']['seconds']:.1f} s / "
          f"{rounds['fedp2eft']['peak_rss_mib']:.0f} MiB")
    print(f"training step at r={args.rank}: peft LoRA {steps['median_step_s']['lora'] * 1000:.0f} ms, "
          f"BT-LoRA {steps['median_step_s']['bt_lora'] * 1000:.0f} ms, ratio {steps['ratio_bt_over_lora']:.3f} "
          "(target <= 1.10)")
    print(f"PSG payload: {pay['psg_parameters']:,} parameters = {pay['percent']:.2f}% of the base model's "
          f"{pay['base_parameters']:,}")


if __name__ == "__main__":
    main()
