"""Learned learning rates per module type, per client and per pool (FedL2P's generator, FedP²EFT's
step head): what a generator gives each client, beside the rate a validated sweep chose.

A client's rates are grouped by module type (``module_types``); a group's value is the geometric mean
of its rates (rates are compared by ratio). The report gives, per pool and group, the geometric mean
over clients, the smallest and largest client value, and the SD over clients of log10 η: 0 means
every client gets the same rate, so the generator learned a rate but no personalisation of it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..atomic import write_json
from .module_types import module_type


def rates_by_type(labels: list[str], rates: torch.Tensor) -> dict[str, float]:
    """Geometric mean of ``rates`` per group; ``labels[i]`` names rate i's module (``<module>``, or
    ``<module>#A`` / ``<module>#B`` for FedL2P's per-matrix rates, grouped as ``<type>.A`` / ``<type>.B``)."""
    groups: dict[str, list[float]] = {}
    for label, rate in zip(labels, rates.detach().double().flatten().tolist(), strict=True):
        module, _, matrix = label.partition("#")
        key = module_type(module) + (f".{matrix}" if matrix else "")
        groups.setdefault(key, []).append(math.log(max(rate, 1e-30)))
    return {k: math.exp(sum(v) / len(v)) for k, v in groups.items()}


def pool_summary(clients: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per group over a pool's clients: geometric mean, min, max and the SD of log10 η."""
    out: dict[str, dict[str, float]] = {}
    for key in sorted({k for c in clients.values() for k in c}):
        logs = [math.log10(c[key]) for c in clients.values() if key in c]
        mean = sum(logs) / len(logs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1)) if len(logs) > 1 else 0.0
        out[key] = {"geomean": 10 ** mean, "min": 10 ** min(logs), "max": 10 ** max(logs), "sd_log10": sd}
    return out


def write_rate_report(folder: Path, pools: dict[str, dict[str, dict[str, float]]], what: str) -> dict:
    """``rate_report.json`` in a stage folder: per pool, every client's rates by group and their summary."""
    report = {"what": what, "pools": {pool: {"summary": pool_summary(clients), "clients": clients}
                                      for pool, clients in pools.items()}}
    write_json(Path(folder) / "rate_report.json", report)
    return report
