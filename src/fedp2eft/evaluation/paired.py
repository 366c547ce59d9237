"""Paired comparisons of two methods on the same replicates and clients.

A method's score on a replicate is the benchmark's own: each language's rows pooled over its clients,
then the mean over languages. Two intervals are given for the difference method − reference:

- **over replicates**: the per-seed differences (the same seed: the same federation, or the same
  personalisation seed of one federation), their mean and a Student-t 95 % interval (n − 1 degrees of
  freedom; none with one replicate);
- **over clients**: a paired bootstrap. Each resample draws, in every replicate and language, that
  language's clients with replacement (the same clients for both methods), recomputes both scores and
  their difference, and averages it over the replicates; the interval is the 2.5 and 97.5 percentiles.
  It needs each run's ``per_client`` record (runs written before it existed have none).
- **over rows**: the same, drawing test rows instead of clients (within each language, the rows of all
  its clients pooled). Where a pool has few clients (Fed-Aya: 9 seen, 3 unseen) this is the interval
  that says whether a difference is larger than the test set's noise; it holds the clients fixed, so it
  is narrower than the one over clients wherever clients differ. It needs each client's per-row scores
  (``per_client[...]["rows"]``).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

import torch

# Student-t 0.975 quantiles for 1..30 degrees of freedom (beyond: the normal's 1.96 and a 1/df correction)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("a t interval needs at least 2 values")
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_interval(values: list[float]) -> tuple[float, float | None, float | None]:
    """Mean and Student-t 95 % interval (None, None with fewer than 2 values)."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return m, None, None
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half


def _metric_value(run: dict, metric: str | None) -> float:
    if metric is not None and metric in run.get("metrics", {}):
        return run["metrics"][metric]["mean"]
    return run["mean"]


def _client_sums(run: dict, metric: str | None) -> dict[str, tuple[str, int, float]]:
    """client -> (language, rows, sum of the metric) from a run's ``per_client``."""
    out = {}
    for cid, rec in run.get("per_client", {}).items():
        sums = rec["sums"]
        value = sums[metric] if metric in sums else next(iter(sums.values()))
        out[cid] = (rec["language"], int(rec["n"]), float(value))
    return out


def _score(clients: list[str], table: dict[str, tuple[str, int, float]]) -> float:
    by_lang: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for cid in clients:
        lang, n, total = table[cid]
        by_lang[lang][0] += total
        by_lang[lang][1] += n
    values = [s / n for s, n in by_lang.values() if n > 0]
    return sum(values) / len(values) if values else float("nan")


def bootstrap_clients(pairs: list[tuple[dict, dict]], metric: str | None = None, resamples: int = 2000,
                      seed: int = 0) -> tuple[float, float] | None:
    """Paired bootstrap 95 % interval of the mean (over replicates) difference, resampling clients within
    each language; ``pairs``: (run, reference run) per replicate. None when a run has no per-client record."""
    tables = [(_client_sums(a, metric), _client_sums(b, metric)) for a, b in pairs]
    if not tables or any(not a or set(a) != set(b) for a, b in tables):
        return None
    strata = []
    for a, _ in tables:
        langs: dict[str, list[str]] = defaultdict(list)
        for cid, (lang, n, _) in sorted(a.items()):
            if n > 0:
                langs[lang].append(cid)
        strata.append(list(langs.values()))
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        total = 0.0
        for (a, b), groups in zip(tables, strata, strict=True):
            drawn = [rng.choice(g) for g in groups for _ in g]
            total += _score(drawn, a) - _score(drawn, b)
        diffs.append(total / len(tables))
    diffs.sort()
    return diffs[int(0.025 * (resamples - 1))], diffs[int(math.ceil(0.975 * (resamples - 1)))]


def _row_table(run: dict, metric: str | None) -> dict[str, list[float]] | None:
    """language -> the run's per-row scores of ``metric`` in a fixed order (clients sorted, rows in order);
    None when a client has no per-row record."""
    out: dict[str, list[float]] = defaultdict(list)
    for _, rec in sorted(run.get("per_client", {}).items(), key=lambda kv: kv[0]):
        rows = rec.get("rows")
        if not rows:
            return None
        values = rows[metric] if metric in rows else next(iter(rows.values()))
        langs = rec.get("row_languages") or [rec["language"]] * len(values)
        for lang, v in zip(langs, values, strict=True):
            out[lang].append(float(v))
    return dict(out) if out else None


def bootstrap_rows(pairs: list[tuple[dict, dict]], metric: str | None = None, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float] | None:
    """Paired bootstrap 95 % interval of the mean (over replicates) difference, resampling test rows within
    each language (the same rows for both methods); ``pairs``: (run, reference run) per replicate. None when
    a run has no per-row record or the two runs scored different rows."""
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(resamples, dtype=torch.float64)
    for a, b in pairs:
        ta, tb = _row_table(a, metric), _row_table(b, metric)
        if ta is None or tb is None or {k: len(v) for k, v in ta.items()} != {k: len(v) for k, v in tb.items()}:
            return None
        per_language = []
        for lang in sorted(ta):
            diff = torch.tensor(ta[lang], dtype=torch.float64) - torch.tensor(tb[lang], dtype=torch.float64)
            draws = torch.randint(len(diff), (resamples, len(diff)), generator=gen)
            per_language.append(diff[draws].mean(1))
        total += torch.stack(per_language).mean(0)
    diffs = sorted((total / len(pairs)).tolist())
    return diffs[int(0.025 * (resamples - 1))], diffs[int(math.ceil(0.975 * (resamples - 1)))]


def paired_difference(runs: list[dict], method: str, reference: str, pool: str, budget: int | None,
                      metric: str | None = None, resamples: int = 2000) -> dict | None:
    """``method`` − ``reference`` on the seeds both have in ``pool`` at ``budget`` (a method without a budget,
    e.g. ``none``, is paired with the reference at ``budget``): ``{n, mean, t_low, t_high, boot_low,
    boot_high, rows_low, rows_high, per_seed}`` (fractions, not %; an interval None where the runs lack the
    records it resamples); None when they share no seed."""
    def pick(name: str) -> dict[int, dict]:
        return {r["seed"]: r for r in runs if r["method"] == name and r["pool"] == pool
                and r["budget"] in (budget, None)}

    a, b = pick(method), pick(reference)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    per_seed = [_metric_value(a[s], metric) - _metric_value(b[s], metric) for s in seeds]
    mean, low, high = mean_interval(per_seed)
    boot = bootstrap_clients([(a[s], b[s]) for s in seeds], metric, resamples)
    rows = bootstrap_rows([(a[s], b[s]) for s in seeds], metric, resamples)
    return {"n": len(seeds), "mean": mean, "t_low": low, "t_high": high,
            "boot_low": boot[0] if boot else None, "boot_high": boot[1] if boot else None,
            "rows_low": rows[0] if rows else None, "rows_high": rows[1] if rows else None,
            "per_seed": dict(zip(seeds, per_seed, strict=True))}
