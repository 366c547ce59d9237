"""``fedp2eft data describe``: clients per language and pool, their sizes and label histograms."""

from __future__ import annotations

from collections import defaultdict

from .partition import POOLS, Federation


def describe(fed: Federation) -> dict:
    """A JSON-able summary: per (main) language and pool, the clients' sizes and their train label
    histograms — or, for instruction data (no labels), their train rows per language."""
    n = len(fed.label_names)
    out: dict = {"dataset": fed.dataset, "labels": fed.label_names, "languages": {}}
    if fed.source:
        out["clients_from"] = fed.source
    by_lang: dict[str, dict[str, list]] = defaultdict(lambda: {p: [] for p in POOLS})
    for c in fed.clients:
        row = {"client": c.cid, "train": len(c.train), "test": len(c.test)}
        if n:
            row["train_labels"] = c.label_histogram(n)
        else:
            row["train_languages"] = c.languages()
        by_lang[c.language][c.pool].append(row)
    for lang in sorted(by_lang):
        out["languages"][lang] = by_lang[lang]
    return out


def render(summary: dict, console) -> None:
    """A compact table (fits 80 columns for up to ~9 labels): one row per client — its id, pool and sizes,
    then one narrow column per label (the label's first four letters) or its train rows per language."""
    from rich import box
    from rich.table import Table

    labels = summary["labels"]
    what = "train label histograms" if labels else "train rows per language"
    table = Table(title=f"{summary['dataset']}: clients, sizes and {what}", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, padding=(0, 1))
    table.add_column("client", no_wrap=True)
    table.add_column("pool", no_wrap=True)
    for col in ("train", "test"):
        table.add_column(col, justify="right", no_wrap=True)
    if labels:
        for label in labels:
            table.add_column(label[:4], justify="right", no_wrap=True)
    else:
        table.add_column("train rows per language", no_wrap=True)
    total = 0
    for pools in summary["languages"].values():
        for pool, clients in pools.items():
            for c in clients:
                last = ([str(h) for h in c["train_labels"]] if labels else
                        [" ".join(f"{k}:{v}" for k, v in c["train_languages"].items())])
                table.add_row(c["client"], pool, str(c["train"]), str(c["test"]), *last)
                total += 1
    console.print(table)
    tail = f"{len(labels)} labels" if labels else f"clients {summary.get('clients_from', 'given')}"
    n_lang = len(summary["languages"])
    console.print(f"{total} clients, {n_lang} main language{'s' if n_lang != 1 else ''}, {tail}")
