"""Diagnostic for the MasakhaNEWS finding: how much rank structure does BT-LoRA's λ develop on one
client within a given number of local steps? Trains stage 1 (eq. 1, authors' settings) from λ = 1e-4
on one seen yor client of the benchmark's base model and prints the spread of λ.

    .venv/bin/python benchmarks/lambda_structure.py [--rows 64] [--epochs 2,8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fedp2eft.data import FederationSpec, build_federation, load_dataset_by_name
from fedp2eft.methods.bt_training import BTSettings, train_lambdas
from fedp2eft.models import load_classifier
from fedp2eft.training.batches import encode

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--epochs", default="2,8")
    ap.add_argument("--base", default=str(HERE / "results" / "masakhanews_small" / "base_model" / "model"))
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "masakhanews"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    ds = load_dataset_by_name("masakhanews", args.data, ["yor"])
    client = build_federation(ds, FederationSpec(clients_per_language=1)).pool("seen")[0]
    base, tok = load_classifier(args.base, ds.num_labels)
    data = encode(tok, client.train[: args.rows], 48)
    for epochs in map(int, args.epochs.split(",")):
        lam, losses = train_lambdas(base, data, 1e-4, BTSettings(r_init=16, lora_alpha=32, epochs=epochs, batch_size=16))
        x = torch.stack(list(lam.values())).double()
        print(f"{len(data)} rows, {epochs} epochs = {len(losses)} steps: λ mean {x.mean():.4f}, SD {x.std():.4f} "
              f"(CV {x.std() / x.mean():.3f}), SD over ranks {x.std(1).mean():.5f}, SD over modules "
              f"{x.mean(1).std():.5f}, range [{x.min():.4f}, {x.max():.4f}]")


if __name__ == "__main__":
    main()
