"""``results.json`` and the paper-style ``results.md`` (rows languages, columns methods, mean ± SD)."""

from __future__ import annotations

import json
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import write_json, write_text
from .evaluation.aggregate import summarise
from .evaluation.paired import paired_difference
from .memory import allocator_in_use
from .models.precision import bf16_is_fast
from .setup.base_models import default_device
from .setup.replicates import replicate_label


def device_name() -> str:
    """The accelerator's name, or the CPU's model name (``/proc/cpuinfo``; the architecture where it cannot
    tell): what a run's seconds were measured on. Sessions can land on different machines, so every run
    records it."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    return f"cpu ({model or platform.processor() or platform.machine()})"


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    import torch

    versions = {"python": platform.python_version(), "fedp2eft": __version__}
    for pkg in ("torch", "transformers", "peft", "flwr", "flwr-datasets", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"packages": versions, "device": device_name(), "torch_threads": torch.get_num_threads(),
            "allocator": allocator_in_use(), "platform": platform.platform(),
            "native_bf16": bf16_is_fast(default_device())}  # what experiment.precision = "auto" resolves by


def load_results(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def run_key(run: dict) -> tuple:
    return (run["method"], run["budget"], run["pool"], run["seed"])


@contextmanager
def results_lock(out_dir: Path):
    """An exclusive lock on ``<out>/results.lock`` (several ``fedp2eft run`` jobs may share a folder)."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def add_run(out_dir: Path, results: dict[str, Any], run: dict[str, Any]) -> None:
    """Add (or replace) one run and write the files, merging runs other jobs wrote meanwhile."""
    with results_lock(out_dir):
        on_disk = load_results(out_dir / "results.json")
        runs = {run_key(r): r for r in (on_disk or {}).get("runs", [])}
        runs.update({run_key(r): r for r in results["runs"] if run_key(r) not in runs})
        runs[run_key(run)] = run
        results["runs"] = list(runs.values())
        write_results(out_dir, results)


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    results["runs"] = sorted(results["runs"], key=lambda r: (r["pool"], str(r["budget"]), r["method"], r["seed"]))
    write_json(out_dir / "results.json", results)
    write_text(out_dir / "results.md", markdown_tables(results))


def _fmt(cell: tuple[float, float, int] | None) -> str:
    """``mean ± SD`` over seeds; a cell of one seed has no SD and shows the mean alone."""
    if cell is None:
        return "–"
    m, sd, n = cell
    return f"{100 * m:.1f} ± {100 * sd:.1f}" if n >= 2 else f"{100 * m:.1f}"


def markdown_tables(results: dict[str, Any]) -> str:
    """One table per (pool, budget) and metric; the "none" column (no budget) is repeated in every table.
    Several metrics (generation: METEOR, ROUGE-1, ROUGE-L) give one table each."""
    metric = results.get("metric", "accuracy")
    metrics = results.get("metrics") or [metric]
    configured = results.get("config", {}).get("personalise", {}).get("methods", [])
    methods = list(dict.fromkeys([*configured, *(r["method"] for r in results["runs"])]))
    pools = list(dict.fromkeys(r["pool"] for r in results["runs"]))
    budgets = sorted({r["budget"] for r in results["runs"] if r["budget"] is not None}) or [None]
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [f"# Results: {results.get('config', {}).get('experiment', {}).get('name', '')}", ""]
    replicate = results.get("config", {}).get("experiment", {}).get("replicate", "personalisation")
    spread = f"mean ± SD over {replicate_label(replicate, seeds)}" if len(seeds) >= 2 else \
        f"one replicate ({replicate_label(replicate, seeds)})" if seeds else "no runs"
    lines.append(f"{', '.join(metrics)} (%), {spread}; per-language values pool all clients of the language.")
    for name in metrics:
        summary = summarise(results["runs"], name if len(metrics) > 1 else None)
        suffix = f": {name}" if len(metrics) > 1 else ""
        for pool in pools:
            for budget in budgets:
                cols = []
                for m in methods:
                    key = (pool, budget, m) if (pool, budget, m) in summary else (pool, None, m)
                    if key in summary:
                        cols.append((m, summary[key]))
                if not cols:
                    continue
                langs = sorted({lang for _, row in cols for lang in row if lang != "mean"})
                rank = f", r = {budget}" if budget is not None else ""
                lines += ["", f"## {pool} clients{rank}{suffix}", ""]
                lines.append("| lang | " + " | ".join(m for m, _ in cols) + " |")
                lines.append("|---|" + "---:|" * len(cols))
                for lang in [*langs, "mean"]:
                    label = "**mean**" if lang == "mean" else lang
                    lines.append(f"| {label} | " + " | ".join(_fmt(row.get(lang)) for _, row in cols) + " |")
                lines += paired_table(results["runs"], [m for m, _ in cols], pool, budget,
                                      name if len(metrics) > 1 else None, replicate)
    lines += cost_table(results)
    return "\n".join(lines) + "\n"


def fine_tunings_per_client(method: str, config: dict) -> int:
    """How many times a method fine-tunes each client: a ``*-tuned`` method once per candidate rate (on the
    train rows minus the held-out part) and once more; ``none`` only when it trains the head."""
    from .config import migrate

    config = migrate(config)  # results files written before the rate sweep's keys moved to [tuned]
    if method.endswith(("-tuned", "-tuned-client")):
        return len(config.get("tuned", {}).get("lrs", [])) + 1
    if method == "none":
        return int(bool(config.get("none", {}).get("trains_head", True)))
    return 1


def cost_table(results: dict[str, Any]) -> list[str]:
    """Per method: seconds of personalisation per client (mean over its runs; federated stages not
    included) and fine-tunings per client."""
    per: dict[str, list[float]] = {}
    for r in results["runs"]:
        if r.get("seconds") is not None and r.get("clients"):
            per.setdefault(r["method"], []).append(r["seconds"] / r["clients"])
    if not per:
        return []
    config = results.get("config", {})
    lines = ["", "## Cost of personalisation", "",
             "Seconds per client (mean over the runs above, on the machine that ran them; federated stages not "
             "included) and fine-tunings per client.", "",
             "| method | seconds per client | fine-tunings per client |", "|---|---:|---:|"]
    for m, xs in per.items():
        lines.append(f"| {m} | {sum(xs) / len(xs):.1f} | {fine_tunings_per_client(m, config)} |")
    return lines


# every method is compared with the base model as it is, LoRA at the set rate and LoRA at a validated rate
REFERENCES = ("none", "lora", "lora-tuned")


def _interval(low: float | None, high: float | None) -> str:
    return "–" if low is None else f"[{100 * low:+.1f}, {100 * high:+.1f}]"


def paired_table(runs: list[dict], methods: list[str], pool: str, budget: int | None, metric: str | None,
                 replicate: str) -> list[str]:
    """Markdown lines: each method's paired difference to ``none``, ``lora`` and ``lora-tuned`` (points; a
    pair shown once: ``lora − none``, not also ``none − lora``), with a 95 % t interval over replicates and
    paired bootstrap intervals over clients and over test rows (``evaluation.paired``)."""
    rows = []
    for j, ref in enumerate(REFERENCES):
        if ref not in methods:
            continue
        for m in methods:
            if m == ref or m in REFERENCES[:j]:
                continue
            d = paired_difference(runs, m, ref, pool, budget, metric)
            if d is None:
                continue
            rows.append(f"| {m} − {ref} | {d['n']} | {100 * d['mean']:+.1f} | {_interval(d['t_low'], d['t_high'])} | "
                        f"{_interval(d['boot_low'], d['boot_high'])} | {_interval(d['rows_low'], d['rows_high'])} |")
    if not rows:
        return []
    what = "federations" if replicate == "federation" else "personalisation seeds"
    return ["", f"Paired differences (points; the same {what} and clients): mean over replicates, 95 % t interval "
            "over replicates, 95 % paired bootstraps over clients and over test rows (each resampled within "
            "language, 2000 draws).", "",
            "| difference | replicates | mean | t interval | bootstrap over clients | bootstrap over rows |",
            "|---|---:|---:|---:|---:|---:|", *rows]


def console_table(results: dict[str, Any]):
    """The same tables as rich Tables, for the terminal (each block's first table: the scores; the paired
    differences stay in ``results.md``)."""
    from itertools import dropwhile, takewhile

    from rich.table import Table

    tables = []
    md = markdown_tables(results).split("\n## ")[1:]
    for block in md:
        body = dropwhile(lambda line: not line.startswith("|"), block.splitlines())
        rows = list(takewhile(lambda line: line.startswith("|"), body))
        title = block.splitlines()[0]
        header = [c.strip() for c in rows[0].strip("|").split("|")]
        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for line in rows[2:]:
            table.add_row(*[c.strip().replace("**", "") for c in line.strip("|").split("|")])
        tables.append(table)
    return tables
