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
    from rich.table import Table

    labels = summary["labels"]
    what = "train label histograms" if labels else "train rows per language"
    table = Table(title=f"{summary['dataset']}: clients, sizes and {what}")
    for col in ("language", "pool", "client", "train", "test"):
        table.add_column(col, justify="right" if col in ("train", "test") else "left")
    if labels:
        table.add_column("train labels (" + " ".join(label[:4] for label in labels) + ")", no_wrap=True)
    else:
        table.add_column("train languages", no_wrap=True)
    total = 0
    for lang, pools in summary["languages"].items():
        for pool, clients in pools.items():
            for c in clients:
                last = (" ".join(f"{h:>4}" for h in c["train_labels"]) if labels else
                        " ".join(f"{k}:{v}" for k, v in c["train_languages"].items()))
                table.add_row(lang, pool, c["client"], str(c["train"]), str(c["test"]), last)
                total += 1
    console.print(table)
    tail = f"{len(labels)} labels" if labels else f"clients {summary.get('clients_from', 'given')}"
    console.print(f"{total} clients, {len(summary['languages'])} main languages, {tail}")
