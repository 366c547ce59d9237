"""XNLI on the shared real data (dev + test only): the paper's per-pool budget with premise groups whole,
and a dataset of one's own with other column names, from the config alone."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedp2eft.config import load_config
from fedp2eft.data.groups import grouped_halves
from fedp2eft.data.records import Example
from fedp2eft.errors import UserError
from fedp2eft.setup.federation import load_federation

LANGS = ["de", "sw", "zh"]


def xnli_cfg(xnli_dir, **extra):
    sets = {"data.dataset": '"xnli"', "data.path": json.dumps(str(xnli_dir)), "data.languages": json.dumps(LANGS),
            "data.clients_per_language": 20, "data.train_per_pool": 2000, "data.test_per_pool": 500, **extra}
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


def premise_parts(fed):
    """premise -> the set of (pool, split) parts its rows are in, per language."""
    parts: dict[tuple[str, str], set] = {}
    for c in fed.clients:
        for split in ("train", "test"):
            for ex in getattr(c, split):
                parts.setdefault((c.language, ex.text), set()).add((c.pool, split))
    return parts


def test_xnli_pools_hold_the_paper_budget_with_premise_groups_whole(xnli_dir):
    fed = load_federation(xnli_cfg(xnli_dir))
    assert len(fed.clients) == 3 * 2 * 20 and fed.label_names == ["entailment", "neutral", "contradiction"]
    for lang in LANGS:
        for pool in ("seen", "unseen"):
            clients = [c for c in fed.clients if c.language == lang and c.pool == pool]
            assert sum(len(c.train) for c in clients) == 2000 and sum(len(c.test) for c in clients) == 500
            assert len({len(c.train) for c in clients}) > 1  # Dirichlet(0.5): unequal, skewed clients
    parts = premise_parts(fed)
    assert all(len(p) == 1 for p in parts.values())  # a premise lies in one of the four parts only
    # rows are parallel across languages: no premise position is a test row in one language and a train
    # row in another — the borrowed test groups are the same positions everywhere
    rows = {lang: [r.split("\t")[0] for r in (xnli_dir / lang / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]]
            for lang in LANGS}
    checked = 0
    for i in range(0, 5010, 3):
        splits = {next(iter(parts[lang, rows[lang][i]]))[1] for lang in LANGS if (lang, rows[lang][i]) in parts}
        assert len(splits) <= 1, i
        checked += bool(splits)
    assert checked >= 2 * 252 + 2 * 167  # test groups used: borrowed for training, then the test rows


def test_grouped_halves_borrow_whole_test_groups_and_refuse_too_few():
    def rows(n, tag):
        return [Example(f"{tag}{i // 3}", i % 3, "xx", f"h{i}") for i in range(n)]

    (tr_a, tr_b), (te_a, te_b) = grouped_halves(rows(30, "d"), rows(60, "t"), 3, 20, 5, __import__("random").Random(0),
                                                "xnli 'xx'")
    assert len(tr_a) == len(tr_b) == 20 and len(te_a) == len(te_b) == 5
    train = {e.text for e in tr_a + tr_b}
    assert {e.text for e in tr_a + tr_b if e.text.startswith("t")} <= {f"t{g}" for g in range(4)}  # 4 borrowed
    assert not train & {e.text for e in te_a + te_b}
    with pytest.raises(UserError, match="too few for 2 pools x 50"):
        grouped_halves(rows(30, "d"), rows(60, "t"), 3, 20, 50, __import__("random").Random(0), "xnli 'xx'")


def test_a_dataset_with_its_own_column_names_loads_from_config(tmp_path):
    for lang in ("aa", "bb"):
        (tmp_path / lang).mkdir()
        lines = ["topic\tsentence\tsecond\textra"]
        lines += [f"{'yes' if i % 2 else 'no'}\t{lang} text {i}\tpair {i}\tx" for i in range(40)]
        (tmp_path / lang / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp_path / lang / "test.tsv").write_text("\n".join(lines[:21]) + "\n", encoding="utf-8")
    sets = {"data.dataset": '"mine"', "data.path": json.dumps(str(tmp_path)), "data.clients_per_language": 2,
            "data.languages": "[]",
            "data.label_column": '"topic"', "data.text_columns": '["sentence"]', "data.pair_column": '"second"'}
    fed = load_federation(load_config(None, [f"{k}={v}" for k, v in sets.items()]))
    assert fed.label_names == ["no", "yes"] and len(fed.clients) == 2 * 2 * 2
    ex = fed.clients[0].train[0]
    assert ex.text.startswith("aa text") and ex.text_pair.startswith("pair")
    # the CLI takes them with --set alone; a wrong column name is a one-line error naming the file
    base = [sys.executable, "-m", "fedp2eft", "data", "describe", "configs/quickstart.toml"]
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    ok = subprocess.run(base + args, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(base + args + ["--set", 'data.label_column="label"'], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "header lacks column(s) ['label']" in bad.stderr and "train.tsv" in bad.stderr
