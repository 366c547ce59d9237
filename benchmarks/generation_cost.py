"""Generation cost of a personalised causal LM served with its adapter: FedP²EFT vs LoRA at equal budget.

The paper's claim (§4.6, Table 6): FedP²EFT's personalised model has the smallest generation memory,
because modules that keep no rank carry no adapter. This script measures it on a finished
``aya_small`` run (its config and seed-0 PSG): for one client it builds, each in a fresh process so
peak memory is its own,

- ``base``: the base model alone (the reference every ratio divides out),
- ``lora``: LoRA of rank r on every decoder linear layer (unmerged, as an adapter is served),
- ``fedp2eft``: the client's BT-LoRA pruned to r·L ranks from the PSG's λ (only modules that keep
  ranks are adapted; unmerged),

and greedily generates for the client's test prompts (``--repeats`` passes, the first discarded as
warm-up). It prints adapted modules, adapter parameters, generation seconds and the peak RSS increase
over the loaded base model, then the ratios FedP²EFT / LoRA. Merged into the weights, both cost
exactly what the base model costs.

    .venv/bin/python benchmarks/generation_cost.py --config benchmarks/aya_small.toml \
        --run benchmarks/results/aya_small [--budget 2] [--set section.key=value ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def measure(args, cfg) -> dict:
    import torch
    from safetensors.torch import load_file

    from fedp2eft.benchkit import open_bench
    from fedp2eft.methods.fedp2eft import PSG_STAGE
    from fedp2eft.methods.fedp2eft.training import personalisation_settings, pruned_model
    from fedp2eft.methods.lora import lora_model
    from fedp2eft.psg import client_lambdas
    from fedp2eft.setup.federation import client_task, stage_context
    from fedp2eft.setup.layout import RunLayout

    bench = open_bench(cfg)
    problem, base = bench.problem, bench.base
    clients = bench.federation.clients
    chosen = next((c for c in clients if c.cid == args.client), None) if args.client else bench.federation.pool("unseen")[0]
    if chosen is None:
        raise SystemExit(f"--client {args.client}: no such client (known: {', '.join(c.cid for c in clients)})")
    task = client_task(chosen, bench.tokenizer, cfg.data.max_length, problem)
    p = cfg.personalise
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.variant == "lora":
        model = lora_model(base, args.budget, p.recipe, problem)
    elif args.variant == "fedp2eft":
        psg_file = RunLayout(args.run).stage(PSG_STAGE.name, 0) / PSG_STAGE.artifact
        if not psg_file.is_file():
            raise SystemExit(f"{psg_file}: missing (run the config with fedp2eft first)")
        s = PSG_STAGE.client_settings(cfg)
        psg = PSG_STAGE.finalize(base, load_file(str(psg_file)), s, psg_file.parent, stage_context(cfg, 0))
        lambdas = client_lambdas(base, psg, task, p.recipe.head)
        model = pruned_model(base, lambdas, args.budget,
                             personalisation_settings(cfg.fedp2eft.bt_settings(p), p.recipe), problem)
    else:
        model = base
    adapted = sum(1 for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A))
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    seconds = []
    with torch.no_grad():
        for _ in range(args.repeats):
            start = time.perf_counter()
            outputs = problem.predict(model, task.test, p.eval_batch_size)
            seconds.append(time.perf_counter() - start)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": args.variant, "client": chosen.cid, "prompts": len(task.test), "adapted_modules": adapted,
            "adapter_params": params, "seconds": min(seconds[1:] or seconds),
            "peak_rss_over_base_mb": (rss1 - rss0) / 1024, "outputs": outputs}


def main(argv: list[str] | None = None) -> int:
    from fedp2eft.benchkit import add_options, bench_config, write_result

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path("benchmarks/aya_small.toml"))
    ap.add_argument("--run", type=Path, default=Path("benchmarks/results/aya_small"), help="its output folder")
    ap.add_argument("--budget", type=int, default=2)
    ap.add_argument("--client", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # one measurement, in a child process
    a = add_options(ap).parse_args(argv)
    if a.fast:
        a.repeats = 1
    cfg = bench_config(a.config, a)
    if a.variant:
        print(json.dumps(measure(a, cfg)))
        return 0
    rows = []
    for variant in ("base", "lora", "fedp2eft"):
        proc = subprocess.run([sys.executable, __file__, *argv, "--variant", variant], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{variant}: {(proc.stderr.strip().splitlines() or ['failed'])[-1]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"client {rows[0]['client']}, {rows[0]['prompts']} prompts, r = {a.budget}")
    print(f"{'variant':10} {'modules':>8} {'adapter params':>15} {'gen s':>8} {'peak RSS over base MB':>22}")
    for r in rows:
        print(f"{r['variant']:10} {r['adapted_modules']:>8} {r['adapter_params']:>15,} {r['seconds']:>8.2f} "
              f"{r['peak_rss_over_base_mb']:>22.1f}")
    lora, ours, base = rows[1], rows[2], rows[0]
    print(f"FedP²EFT / LoRA: adapter params {ours['adapter_params'] / lora['adapter_params']:.3f}, "
          f"generation time {ours['seconds'] / lora['seconds']:.3f} (base / LoRA {base['seconds'] / lora['seconds']:.3f}), "
          f"adapted modules {ours['adapted_modules']}/{lora['adapted_modules']}")
    if a.out:
        write_result(a.out, {"config": str(a.config), "run": str(a.run), "budget": a.budget, "sets": a.sets,
                             "rows": [{k: v for k, v in r.items() if k != "outputs"} for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
