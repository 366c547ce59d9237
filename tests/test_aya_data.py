"""Fed-Aya readers: FedLLM-Bench's file, the hub's aya_dataset and a JSONL without ids (the shared sample)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import shared_data_dir
from fedp2eft.data import FederationSpec
from fedp2eft.data.aya import AYA_LANGUAGES, FEDAYA_UNSEEN, load_aya_federation
from fedp2eft.errors import UserError

LANGS = list(AYA_LANGUAGES)


@pytest.fixture(scope="module")
def aya_sample() -> Path:
    path = shared_data_dir() / "aya" / "aya_sample.jsonl"
    if not path.is_file():
        pytest.skip(f"shared Aya sample not found at {path}")
    return path


def fedllm_bench_file(tmp_path: Path, clients: int = 38) -> Path:
    """FedLLM-Bench's layout: an object of client -> rows (instruction, response, two-letter language);
    client k has 5 + k rows, one of them in a language Fed-Aya drops."""
    data = {}
    for k in range(clients):
        rows = [{"instruction": f"q{k}-{i}", "response": f"a{k}-{i}", "language": LANGS[(k + i) % 8]}
                for i in range(5 + k)]
        rows.append({"instruction": "hola", "response": "x", "language": "de"})
        data[f"client_{37 - k:02d}"] = rows  # keys not sorted: file order is what counts
    path = tmp_path / "aya_38c_25k.json"
    path.write_text(json.dumps(data))
    return path


def test_fedllm_bench_file_clients_in_file_order_and_the_papers_unseen_pool(tmp_path):
    fed = load_aya_federation(str(fedllm_bench_file(tmp_path)), FederationSpec(seed=0))
    assert len(fed.clients) == 38 and fed.source == "annotators"
    unseen = [int(c.cid[3:5]) for c in fed.clients if c.pool == "unseen"]
    assert unseen == list(FEDAYA_UNSEEN)
    for k, c in enumerate(fed.clients):
        assert len(c.train) + len(c.test) == 5 + k  # client k is the k-th key; the "de" row dropped
        assert len(c.test) == round(0.2 * (5 + k))  # 80/20 per client
        assert all(r.prompt.startswith(f"q{k}-") for r in c.train + c.test)
        assert {r.language for r in c.train + c.test} <= set(LANGS)


def test_fedllm_bench_split_is_seeded(tmp_path):
    path = str(fedllm_bench_file(tmp_path))
    a = load_aya_federation(path, FederationSpec(seed=0))
    b = load_aya_federation(path, FederationSpec(seed=0))
    c = load_aya_federation(path, FederationSpec(seed=1))
    assert [x.test for x in a.clients] == [x.test for x in b.clients]
    assert [x.test for x in a.clients] != [x.test for x in c.clients]


def test_hub_aya_dataset_clients_by_user_id(monkeypatch):
    import datasets

    rows = []
    for u, n in (("u-small", 3), ("u-big", 12), ("u-mid", 7)):
        rows += [{"inputs": f"{u} {i}", "targets": "r", "language": "Standard Arabic", "language_code": "arb",
                  "annotation_type": "original-annotations", "user_id": u} for i in range(n)]
    rows.append({"inputs": "x", "targets": "y", "language": "German", "language_code": "deu",
                 "annotation_type": "original-annotations", "user_id": "u-de"})
    calls = []

    def fake_load(repo, split=None, **_):
        calls.append((repo, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    fed = load_aya_federation(None, FederationSpec(seed=0), num_clients=2, unseen=[1])
    assert calls == [("CohereForAI/aya_dataset", "train")]
    assert [(c.pool, len(c.train) + len(c.test)) for c in fed.clients] == [("seen", 12), ("unseen", 7)]
    assert all(c.language == "ar" for c in fed.clients)  # every Arabic variety is "ar"


def test_jsonl_without_ids_simulates_clients_with_one_to_four_languages(aya_sample):
    fed = load_aya_federation(str(aya_sample), FederationSpec(seed=0), num_clients=20)
    assert fed.source == "simulated" and len(fed.clients) == 20
    sizes = [len(c.train) + len(c.test) for c in fed.clients]
    assert len(set(sizes)) > 10  # unequal sizes
    langs = [set(c.languages("train")) | set(c.languages("test")) for c in fed.clients]
    assert all(1 <= len(x) <= 4 for x in langs)
    assert any(len(x) >= 2 for x in langs) and any(len(x) == 1 for x in langs)
    for pool in ("seen", "unseen"):  # every language reaches a client of each pool
        assert {lang for c, x in zip(fed.clients, langs) if c.pool == pool for lang in x} == set(LANGS)
    assert Counter(c.pool for c in fed.clients) == {"seen": 16, "unseen": 4}
    mixed = next(c for c, x in zip(fed.clients, langs) if len(x) >= 3)
    assert len({r.language for r in mixed.train[: len(mixed.train) // 2]}) >= 2  # a capped client keeps its mix
    rows = [r for c in fed.clients for r in c.train + c.test]
    assert len(rows) == sum(1 for line in aya_sample.open() if line.strip())  # every row, once


@pytest.mark.parametrize("content,message", [
    ("", "empty file"),
    ('{"inputs": "a", "targets": "b", "lang": "en"}\n{broken\n', "line 2 is not valid JSON"),
    ('{"inputs": "a", "lang": "en"}\n', "row 1 lacks an instruction and response"),
    ('{"inputs": "a", "targets": "  ", "lang": "en"}\n', "row 1 has an empty targets"),
    ('{"inputs": "a", "targets": "b", "lang": "de"}\n', "no rows in the languages"),
])
def test_bad_aya_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_aya_federation(str(path), FederationSpec(seed=0))


def test_unknown_language_and_impossible_unseen_clients(aya_sample):
    with pytest.raises(UserError, match="unknown language"):
        load_aya_federation(str(aya_sample), FederationSpec(seed=0), languages=["xx"])
    with pytest.raises(UserError, match="there are 8 clients"):
        load_aya_federation(str(aya_sample), FederationSpec(seed=0), num_clients=8, unseen=[9])


def test_data_describe_works_for_every_aya_format(tmp_path, aya_sample):
    cli = [sys.executable, "-m", "fedp2eft", "data", "describe"]
    for path in (str(fedllm_bench_file(tmp_path)), str(aya_sample)):
        cfg = tmp_path / "aya.toml"
        cfg.write_text(f'[data]\ndataset = "aya"\npath = "{path}"\nnum_clients = 12\n')
        out = subprocess.run([*cli, str(cfg), "--json"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        clients = [c for pools in summary["languages"].values() for cs in pools.values() for c in cs]
        assert len(clients) == 12 and all(c["train_languages"] for c in clients)
        table = subprocess.run([*cli, str(cfg)], capture_output=True, text=True, timeout=300)
        assert table.returncode == 0 and "train rows per language" in table.stdout + table.stderr


def test_row_caps_keep_every_language_of_a_client():
    from fedp2eft.data.records import Instruction
    from fedp2eft.setup.federation import cap_rows

    rows = [Instruction(f"p{i}", "r", lang) for i, lang in enumerate("aaaaaabbc")]
    assert [r.prompt for r in cap_rows(rows, 4)] == ["p0", "p1", "p6", "p8"]  # a, b, c, then a again; row order kept
    one = [Instruction(f"p{i}", "r", "a") for i in range(5)]
    assert cap_rows(one, 3) == one[:3]  # one language: the first rows, as before
    assert cap_rows(one, 9) == one
