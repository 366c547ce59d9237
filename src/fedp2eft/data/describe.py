"""``fedp2eft data describe``: clients per language and pool, their sizes and label histograms."""

from __future__ import annotations

from collections import defaultdict

from .partition import POOLS, Federation


def describe(fed: Federation) -> dict:
    """A JSON-able summary: per language and pool, the clients' sizes and train label histograms."""
    n = len(fed.label_names)
    out: dict = {"dataset": fed.dataset, "labels": fed.label_names, "languages": {}}
    by_lang: dict[str, dict[str, list]] = defaultdict(lambda: {p: [] for p in POOLS})
    for c in fed.clients:
        by_lang[c.language][c.pool].append(
            {"client": c.cid, "train": len(c.train), "test": len(c.test), "train_labels": c.label_histogram(n)}
        )
    for lang in sorted(by_lang):
        out["languages"][lang] = by_lang[lang]
    return out


def render(summary: dict, console) -> None:
    from rich.table import Table

    labels = summary["labels"]
    table = Table(title=f"{summary['dataset']}: clients, sizes and train label histograms")
    for col in ("language", "pool", "client", "train", "test"):
        table.add_column(col, justify="right" if col in ("train", "test") else "left")
    table.add_column("train labels (" + " ".join(label[:4] for label in labels) + ")", no_wrap=True)
    total = 0
    for lang, pools in summary["languages"].items():
        for pool, clients in pools.items():
            for c in clients:
                table.add_row(lang, pool, c["client"], str(c["train"]), str(c["test"]),
                              " ".join(f"{h:>4}" for h in c["train_labels"]))
                total += 1
    console.print(table)
    console.print(f"{total} clients, {len(summary['languages'])} languages, {len(labels)} labels")
