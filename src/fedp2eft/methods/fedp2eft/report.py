"""λ analysis of a trained PSG: every client's generated λ, the rank-structure plot per layer
(the paper's appendix figures) and the cross-lingual λ distance heatmap (FedP²EFT §4.7):

    block(j, k) = log( d(j, k) / sqrt(d(j, j) · d(k, k)) ),

with d(j, k) the mean Euclidean distance between the λ of all pairs of clients holding
languages j and k (pairs of distinct clients when j = k).

``write_lambda_trajectory`` draws λ over the PSG's training rounds from its ``rounds.jsonl``: the
mean per module type and the spread over ranks, modules and clients (``lambda_trajectory.png``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from ...atomic import atomic_path, save_tensors, write_json
from ...psg.features import client_lambdas, feature_modules


def language_distance(lambdas: dict[str, torch.Tensor], languages: dict[str, str]) -> tuple[list[str], np.ndarray]:
    """``(languages, matrix)`` of log-normalised mean λ distances between languages."""
    langs = sorted(set(languages.values()))
    by_lang = {lang: [c for c in lambdas if languages[c] == lang] for lang in langs}
    flat = {c: v.flatten().double() for c, v in lambdas.items()}

    def mean_dist(a: list[str], b: list[str], same: bool) -> float:
        pairs = itertools.combinations(a, 2) if same else itertools.product(a, b)
        d = [float(torch.dist(flat[x], flat[y])) for x, y in pairs]
        return float(np.mean(d)) if d else float("nan")

    d = np.zeros((len(langs), len(langs)))
    for i, j in itertools.product(range(len(langs)), repeat=2):
        d[i, j] = mean_dist(by_lang[langs[i]], by_lang[langs[j]], i == j)
    diag = np.sqrt(np.outer(np.diag(d), np.diag(d)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return langs, np.log(d / diag)


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_rank_structure(lam: np.ndarray, names: list[str], title: str, path: Path) -> None:
    """Two panels: each module's mean λ (left), and each rank's λ as its deviation from its module's
    mean in % (right), on a symmetric colour scale of at least ±1 % — so a 1 % difference between
    the ranks of a module shows even when modules differ by far more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    module_mean = lam.mean(1, keepdims=True) if lam.size else lam
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(module_mean > 0, 100.0 * (lam / module_mean - 1.0), 0.0)
    lim = max(1.0, float(np.percentile(np.abs(rel), 99))) if rel.size else 1.0
    labels = [n.replace("backbone.", "").replace("encoder.layer.", "L") for n in names]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, max(3, 0.18 * len(names))),
                                   gridspec_kw={"width_ratios": [1, 3]})
    ax1.barh(range(len(names)), module_mean.ravel(), color="tab:blue")
    ax1.set_ylim(len(names) - 0.5, -0.5)
    ax1.set_yticks(range(len(names)))
    ax1.set_yticklabels(labels, fontsize=6)
    ax1.set_xlabel("module mean λ")
    im = ax2.imshow(rel, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ax2.set_yticks([])
    ax2.set_xlabel("rank index")
    ax2.set_title(f"{title} (mean λ = {float(lam.mean()) if lam.size else 0.0:.4g})")
    fig.colorbar(im, ax=ax2, label="λ vs its module's mean (%)")
    _save_png(fig, path)
    plt.close(fig)


def lambda_trajectory(rounds: list[dict]) -> dict:
    """Per round: λ's mean per module type, its SD over ranks and modules (averaged over clients)
    and over clients (SD of the clients' mean λ), from the per-client metrics of ``rounds.jsonl``."""
    out: dict = {"round": [], "types": {}, "sd_over_ranks": [], "sd_over_modules": [], "sd_over_clients": [],
                 "lambda_mean": []}
    for rec in rounds:
        clients = [c for c in (rec.get("clients") or {}).values() if "lambda_mean" in c]
        if not clients:
            continue
        out["round"].append(rec["round"])
        avg = lambda key, cs=clients: float(np.mean([c[key] for c in cs if key in c]))  # noqa: E731
        out["lambda_mean"].append(avg("lambda_mean"))
        out["sd_over_ranks"].append(avg("lambda_sd_over_ranks"))
        out["sd_over_modules"].append(avg("lambda_sd_over_modules"))
        out["sd_over_clients"].append(float(np.std([c["lambda_mean"] for c in clients], ddof=1))
                                      if len(clients) > 1 else 0.0)
        for key in sorted({k for c in clients for k in c if k.startswith("lambda_mean_")}):
            out["types"].setdefault(key[len("lambda_mean_"):], {})[rec["round"]] = avg(key)
    return out


def write_lambda_trajectory(folder: Path) -> dict | None:
    """``lambda_trajectory.png`` and ``lambda_trajectory.json`` from ``folder/rounds.jsonl``."""
    import json

    path = Path(folder) / "rounds.jsonl"
    if not path.is_file():
        return None
    traj = lambda_trajectory([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
    if not traj["round"]:
        return None
    write_json(Path(folder) / "lambda_trajectory.json", traj)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for kind, series in traj["types"].items():
        xs = sorted(series)
        ax1.plot(xs, [series[x] for x in xs], label=kind)
    ax1.set_xlabel("PSG round")
    ax1.set_ylabel("mean trained λ (sampled clients)")
    ax1.set_yscale("log")
    ax1.legend(fontsize=7)
    ax1.set_title("λ per module type")
    rel = lambda key: [s / m if m else 0.0 for s, m in zip(traj[key], traj["lambda_mean"])]  # noqa: E731
    for key in ("sd_over_ranks", "sd_over_modules", "sd_over_clients"):
        ax2.plot(traj["round"], rel(key), label=key.replace("_", " "))
    ax2.set_xlabel("PSG round")
    ax2.set_ylabel("SD / mean λ")
    if any(v > 0 for key in ("sd_over_ranks", "sd_over_modules", "sd_over_clients") for v in rel(key)):
        ax2.set_yscale("log")
    ax2.legend(fontsize=7)
    ax2.set_title("spread of λ (relative)")
    _save_png(fig, Path(folder) / "lambda_trajectory.png")
    plt.close(fig)
    return traj


def plot_distance(langs: list[str], matrix: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.5 * len(langs), 0.8 + 0.45 * len(langs)))
    im = ax.imshow(matrix, cmap="magma_r")
    ax.set_xticks(range(len(langs)), langs, rotation=90)
    ax.set_yticks(range(len(langs)), langs)
    for i, j in itertools.product(range(len(langs)), repeat=2):
        if np.isfinite(matrix[i, j]):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    _save_png(fig, path)
    plt.close(fig)


def write_lambda_report(base, psg, tasks: dict[str, list], folder: Path, head: str = "train") -> dict:
    """Generate every client's λ, save them (safetensors) and the plots (PNG). ``base``: the base model, or
    a base source whose ``for_client(id)`` gives each client its own (a personalised base)."""
    folder = Path(folder)
    own = (lambda cid: base.for_client(cid)) if hasattr(base, "for_client") else (lambda cid: base)  # noqa: E731
    names = feature_modules(own(""), head)
    summary = {}
    for pool, pool_tasks in tasks.items():
        lams = {t.client_id: torch.stack([v for v in client_lambdas(own(t.client_id), psg, t, head).values()])
                for t in pool_tasks}
        langs = {t.client_id: t.language for t in pool_tasks}
        save_tensors(folder / f"lambdas_{pool}.safetensors", lams)
        mean = torch.stack(list(lams.values())).mean(0).numpy()
        plot_rank_structure(mean, names, f"PSG λ, mean over {pool} clients", folder / f"rank_structure_{pool}.png")
        langs_sorted, matrix = language_distance(lams, langs)
        plot_distance(langs_sorted, matrix, f"cross-lingual λ distance ({pool})", folder / f"lambda_distance_{pool}.png")
        stack = torch.stack(list(lams.values())).double()  # clients x modules x ranks
        summary[pool] = {"languages": langs_sorted, "distance": np.where(np.isfinite(matrix), matrix, None).tolist(),
                         "lambda_mean": float(mean.mean()), "lambda_max": float(mean.max()),
                         "lambda_min": float(mean.min()),
                         # how much structure λ has: spread over ranks within a module, over modules, over clients
                         "sd_over_ranks": float(stack.std(2).mean()), "sd_over_modules": float(stack.mean(2).std(1).mean()),
                         "sd_over_clients": float(stack.std(0).mean()) if len(lams) > 1 else 0.0}
    write_json(folder / "lambda_report.json", {"modules": names, "pools": summary})
    write_lambda_trajectory(folder)
    return summary
