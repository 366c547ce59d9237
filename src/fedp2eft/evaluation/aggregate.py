"""Aggregation as in the paper: pool each language's predictions over all clients of a pool,
average the per-language accuracies, and report mean ± SD over seeds (sample SD, ddof = 1;
0 with a single seed)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class LanguageTally:
    """Running correct/total counts per language."""

    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, language: str, predictions: list[int], labels: list[int]) -> None:
        if len(predictions) != len(labels):
            raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
        self.correct[language] += sum(int(p == y) for p, y in zip(predictions, labels))
        self.total[language] += len(labels)

    def add_scores(self, language: str, scores: list[float]) -> None:
        """One client's per-row scores (a task's ``score``: 1/0 per row for accuracy)."""
        self.correct[language] += sum(scores)
        self.total[language] += len(scores)

    def per_language(self) -> dict[str, dict[str, float | int]]:
        return {
            lang: {"value": self.correct[lang] / self.total[lang], "n": self.total[lang]}
            for lang in sorted(self.total)
            if self.total[lang] > 0
        }


def mean_over_languages(per_language: dict[str, dict]) -> float:
    values = [v["value"] for v in per_language.values()]
    return sum(values) / len(values) if values else float("nan")


def mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarise(runs: list[dict]) -> dict[tuple, dict[str, tuple[float, float, int]]]:
    """Group runs by (pool, budget, method): ``{lang or 'mean': (mean, sd, n_seeds)}``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["pool"], run["budget"], run["method"])].append(run)
    out: dict[tuple, dict[str, tuple[float, float, int]]] = {}
    for key, rs in groups.items():
        langs = sorted({lang for r in rs for lang in r["per_language"]})
        row = {}
        for lang in langs:
            vals = [r["per_language"][lang]["value"] for r in rs if lang in r["per_language"]]
            row[lang] = (*mean_sd(vals), len(vals))
        row["mean"] = (*mean_sd([r["mean"] for r in rs]), len(rs))
        out[key] = row
    return out
