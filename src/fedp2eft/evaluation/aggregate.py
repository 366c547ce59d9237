"""Aggregation as in the paper: pool each language's predictions over all clients of a pool,
average the per-language accuracies, and report mean ± SD over seeds (sample SD, ddof = 1;
0 with a single seed)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class LanguageTally:
    """Running score sums and row counts per language, for every metric a task scores."""

    sums: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add_scores(self, language: str | list[str], scores: dict[str, list[float]] | list[float]) -> None:
        """One client's per-row scores (a task's ``score``: ``{metric: [score per row]}``; a bare list is
        one "accuracy" metric). ``language`` is the client's, or a list with each row's language."""
        if not isinstance(scores, dict):
            scores = {"accuracy": list(scores)}
        n = len(next(iter(scores.values()))) if scores else 0
        langs = [language] * n if isinstance(language, str) else list(language)
        if len(langs) != n or any(len(v) != n for v in scores.values()):
            raise ValueError(f"{len(langs)} row languages for per-row scores of lengths {[len(v) for v in scores.values()]}")
        for metric, values in scores.items():
            for lang, v in zip(langs, values):
                self.sums[metric][lang] += float(v)
        for lang in langs:
            self.total[lang] += 1

    def metrics(self) -> list[str]:
        return list(self.sums)

    def per_language(self, metric: str | None = None) -> dict[str, dict[str, float | int]]:
        """``{language: {value, n}}`` of ``metric`` (default: the first one added)."""
        if not self.sums:
            return {}
        sums = self.sums[metric or next(iter(self.sums))]
        return {lang: {"value": sums[lang] / self.total[lang], "n": self.total[lang]}
                for lang in sorted(self.total) if self.total[lang] > 0}


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


def run_metric(run: dict, metric: str | None) -> dict:
    """A run's ``per_language`` and ``mean`` of ``metric`` (None or the primary metric: the run's own)."""
    if metric is None or metric not in run.get("metrics", {}):
        return run
    return run["metrics"][metric]


def summarise(runs: list[dict], metric: str | None = None) -> dict[tuple, dict[str, tuple[float, float, int]]]:
    """Group runs by (pool, budget, method): ``{lang or 'mean': (mean, sd, n_seeds)}`` of ``metric``
    (default: each run's primary metric)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["pool"], run["budget"], run["method"])].append(run_metric(run, metric))
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
