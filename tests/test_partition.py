"""The federated setup: deterministic, disjoint pools, every language, real label skew, sizes add up."""

from __future__ import annotations

import numpy as np
import pytest

from fedp2eft.data import FederationSpec, build_federation, load_dataset_by_name
from fedp2eft.data.records import Example, LanguageData, TextDataset
from fedp2eft.errors import UserError

LANGS = ["amh", "hau", "lin", "yor"]


@pytest.fixture(scope="module")
def dataset(masakhanews_dir):
    return load_dataset_by_name("masakhanews", masakhanews_dir, LANGS)


def ids(rows):
    return {id(r) for r in rows}


def skew(fed, num_labels):
    """Mean total-variation distance between each client's and its pool's label distribution."""
    out = []
    for lang in fed.languages:
        for pool in ("seen", "unseen"):
            clients = [c for c in fed.pool(pool) if c.language == lang]
            total = np.sum([c.label_histogram(num_labels) for c in clients], axis=0)
            ref = total / total.sum()
            for c in clients:
                h = np.array(c.label_histogram(num_labels))
                out.append(0.5 * np.abs(h / h.sum() - ref).sum())
    return float(np.mean(out))


def test_deterministic_by_seed(dataset):
    a = build_federation(dataset, FederationSpec(clients_per_language=5, seed=3))
    b = build_federation(dataset, FederationSpec(clients_per_language=5, seed=3))
    c = build_federation(dataset, FederationSpec(clients_per_language=5, seed=4))
    sig = lambda f: [(x.cid, [e.text for e in x.train], [e.text for e in x.test]) for x in f.clients]
    assert sig(a) == sig(b)
    assert sig(a) != sig(c)


def test_pools_disjoint_every_language_sizes_sum(dataset):
    fed = build_federation(dataset, FederationSpec(clients_per_language=5, seed=0))
    assert len(fed.clients) == len(LANGS) * 2 * 5
    for lang in LANGS:
        data = dataset.languages[lang]
        pooled = [e for s, rows in data.splits.items() if s != "test" for e in rows]
        test = data.splits["test"]
        seen = [c for c in fed.pool("seen") if c.language == lang]
        unseen = [c for c in fed.pool("unseen") if c.language == lang]
        assert len(seen) == len(unseen) == 5
        seen_rows = [e for c in seen for e in c.train + c.test]
        unseen_rows = [e for c in unseen for e in c.train + c.test]
        assert not ids(seen_rows) & ids(unseen_rows)
        assert sum(len(c.train) for c in seen + unseen) == len(pooled)
        assert sum(len(c.test) for c in seen + unseen) == len(test)
        assert abs(sum(len(c.train) for c in seen) - sum(len(c.train) for c in unseen)) <= 1
        train_ids = ids(e for c in seen + unseen for e in c.train)
        assert len(train_ids) == len(pooled)  # no row given twice
        assert all(len(c.train) >= 2 and len(c.test) >= 1 for c in seen + unseen)
        assert len({len(c.train) for c in seen}) > 1  # unequal client sizes


def test_label_skew_is_real(dataset):
    skewed = build_federation(dataset, FederationSpec(clients_per_language=5, alpha=0.5, seed=0))
    iid = build_federation(dataset, FederationSpec(clients_per_language=5, alpha=1000.0, seed=0))
    s, u = skew(skewed, 7), skew(iid, 7)
    assert s > 0.25, s
    assert s > 3 * u, (s, u)


def test_caps_reproduce_xnli_style_pool_sizes(dataset):
    fed = build_federation(dataset, FederationSpec(clients_per_language=4, seed=0, train_per_pool=200, test_per_pool=50))
    for lang in LANGS:
        data = dataset.languages[lang]
        n_pooled = sum(len(r) for s, r in data.splits.items() if s != "test")
        for pool in ("seen", "unseen"):
            cl = [c for c in fed.pool(pool) if c.language == lang]
            half = n_pooled // 2 if pool == "seen" else n_pooled - n_pooled // 2
            assert sum(len(c.train) for c in cl) == min(200, half)  # amh has only 188 rows
            assert sum(len(c.test) for c in cl) == 50


def test_too_many_clients_is_a_clear_error(dataset):
    with pytest.raises(UserError, match="too few for 400 clients"):
        build_federation(dataset, FederationSpec(clients_per_language=400))


def test_language_without_test_split_carves_one():
    rows = [Example(f"t{i}", i % 3, "xx") for i in range(100)]
    ds = TextDataset("toy", ["a", "b", "c"], {"xx": LanguageData("xx", {"train": rows})})
    fed = build_federation(ds, FederationSpec(clients_per_language=2, seed=0, test_fraction=0.2))
    assert sum(len(c.test) for c in fed.clients) == 20
    assert sum(len(c.train) for c in fed.clients) == 80


def test_client_mix_scheme_gives_equal_sizes_own_mixes_and_matching_test_mix(dataset):
    """The authors' LDA: equal-size clients, each with its own Dirichlet class mix, test drawn alike."""
    fed = build_federation(dataset, FederationSpec(clients_per_language=4, alpha=0.5, seed=0, scheme="client-mix"))
    num_labels = len(fed.label_names)
    for lang in fed.languages:
        for pool in ("seen", "unseen"):
            clients = [c for c in fed.pool(pool) if c.language == lang]
            assert len({len(c.train) for c in clients}) == 1  # equal sizes
            assert len({len(c.test) for c in clients}) == 1
            ids_all = [id(r) for c in clients for r in c.train]
            assert len(ids_all) == len(set(ids_all))  # disjoint
    # label skew is real, and each client's test mix follows its train mix more than the pool's does
    assert skew(fed, num_labels) > 0.15
    near, far = [], []
    for c in fed.pool("seen"):
        tr = np.array(c.label_histogram(num_labels)) / max(len(c.train), 1)
        te = np.array(c.label_histogram(num_labels, "test")) / max(len(c.test), 1)
        others = [o for o in fed.pool("seen") if o.language == c.language and o.cid != c.cid]
        near.append(0.5 * np.abs(tr - te).sum())
        far.append(np.mean([0.5 * np.abs(te - np.array(o.label_histogram(num_labels)) / len(o.train)).sum()
                            for o in others]))
    assert np.mean(near) < np.mean(far)
    again = build_federation(dataset, FederationSpec(clients_per_language=4, alpha=0.5, seed=0, scheme="client-mix"))
    assert [len(c.train) for c in again.clients] == [len(c.train) for c in fed.clients]
