"""The paper's federated setup (FedP²EFT §4.1, method-facts 'Data setups').

Per language: the labelled non-test rows (train + dev) are pooled and shuffled, the test
rows likewise; each is cut in half, one half for the *seen* pool (clients that take part
in federated training) and one for the *unseen* pool. Optional caps reproduce XNLI's
"2000 train and 500 test per language per pool". With ``group_size > 1`` (XNLI: premise groups
of three rows) whole groups go to each part and training may borrow the first test groups
(``data.groups``). Inside a pool, the language's rows are
spread over K clients with latent-Dirichlet label skew (Hsu et al. 2019): for every class
c a vector p_c ~ Dir(α·1_K) splits that class's rows among the K clients, so client sizes
differ. The *same* p_c split the pool's test rows, so each client's test split follows its
own label distribution (the personalisation target).

``scheme = "client-mix"`` is the authors' variant instead (their Flower LDA partitioner): every
client has the same number of rows and its own class mix q_k ~ Dir(α·1_C); its rows are drawn
class by class from q_k (a class that runs out is dropped and q_k renormalised), and its test rows
with the same q_k. ``"class-split"`` (above, unequal sizes) is the default.

Why not ``flwr_datasets.partitioner.DirichletPartitioner``: it partitions one dataset on its
own, so it cannot apply the same class proportions to a separate test split, and the pooling
and halving per language happen before it would run. The partition here is the same LDA
scheme, written over index lists; it is deterministic in (seed, language, pool).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .groups import grouped_halves
from .records import Example, TextDataset

POOLS = ("seen", "unseen")


@dataclass(frozen=True)
class FederationSpec:
    clients_per_language: int = 10
    alpha: float = 0.5
    seed: int = 0
    train_per_pool: int | None = None
    test_per_pool: int | None = None
    test_fraction: float = 0.2  # only when a language has no test split
    min_train_per_client: int = 2
    max_resamples: int = 100
    scheme: str = "class-split"  # "class-split" (unequal sizes) | "client-mix" (the authors': equal sizes)
    group_size: int = 1  # rows come in groups of this many consecutive rows kept whole (XNLI premises: 3)


SCHEMES = ("class-split", "client-mix")


@dataclass
class Client:
    cid: str
    language: str
    pool: str
    train: list[Example]
    test: list[Example]
    # the rows encoded for a model, per (tokenizer, length, task): ``setup.federation.client_task``'s memo
    encoded: dict = field(default_factory=dict, repr=False, compare=False)

    def languages(self, split: str = "train") -> dict[str, int]:
        """Rows per language in a split (a Fed-Aya client may speak several)."""
        out: dict[str, int] = {}
        for ex in getattr(self, split):
            out[ex.language] = out.get(ex.language, 0) + 1
        return dict(sorted(out.items()))

    def label_histogram(self, num_labels: int, split: str = "train") -> list[int]:
        hist = [0] * num_labels
        for ex in getattr(self, split):
            hist[ex.label] += 1
        return hist


@dataclass
class Federation:
    dataset: str
    label_names: list[str]
    spec: FederationSpec
    clients: list[Client] = field(default_factory=list)
    source: str = ""  # how clients were formed, where that varies (Fed-Aya: "annotators" or "simulated")

    def pool(self, name: str) -> list[Client]:
        if name not in POOLS:
            raise UserError(f"unknown pool {name!r}; pools are {list(POOLS)}")
        return [c for c in self.clients if c.pool == name]

    @property
    def languages(self) -> list[str]:
        return sorted({c.language for c in self.clients})


def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random(zlib.crc32(("|".join([str(seed), *parts])).encode()))


def dirichlet_split(
    labels_train: list[int],
    labels_test: list[int],
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[list[list[int]], list[list[int]]]:
    """Split train and test indices among clients with one Dir(α) proportion vector per class."""
    train_parts: list[list[int]] = [[] for _ in range(num_clients)]
    test_parts: list[list[int]] = [[] for _ in range(num_clients)]
    classes = sorted(set(labels_train) | set(labels_test))
    for c in classes:
        p = rng.dirichlet([alpha] * num_clients)
        for labels, parts in ((labels_train, train_parts), (labels_test, test_parts)):
            idx = [i for i, y in enumerate(labels) if y == c]
            rng.shuffle(idx)
            cuts = (np.cumsum(p)[:-1] * len(idx)).round().astype(int)
            for k, chunk in enumerate(np.split(np.array(idx, dtype=int), cuts)):
                parts[k].extend(int(i) for i in chunk)
    return train_parts, test_parts


def client_mix_split(
    labels_train: list[int],
    labels_test: list[int],
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
) -> tuple[list[list[int]], list[list[int]]]:
    """Equal-size clients, client k's rows drawn from its own class mix q_k ~ Dir(α), in train and test."""
    classes = sorted(set(labels_train) | set(labels_test))
    mixes = [rng.dirichlet([alpha] * len(classes)) for _ in range(num_clients)]

    def draw(labels: list[int]) -> list[list[int]]:
        left = {c: [i for i, y in enumerate(labels) if y == c] for c in classes}
        for idx in left.values():
            rng.shuffle(idx)
        size = len(labels) // num_clients
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for _ in range(size):
            for k in range(num_clients):  # round robin: no client drains a class before the others draw
                q = np.array([mixes[k][j] if left[c] else 0.0 for j, c in enumerate(classes)])
                if q.sum() <= 0:
                    q = np.array([1.0 if left[c] else 0.0 for c in classes])
                c = classes[int(rng.choice(len(classes), p=q / q.sum()))]
                parts[k].append(left[c].pop())
        return parts

    return draw(labels_train), draw(labels_test)


def _pool_halves(rows: list[Example], rng: random.Random) -> tuple[list[Example], list[Example]]:
    rows = list(rows)
    rng.shuffle(rows)
    half = len(rows) // 2
    return rows[:half], rows[half:]


def build_federation(dataset: TextDataset, spec: FederationSpec) -> Federation:
    """Build seen and unseen clients for every language of ``dataset``."""
    if spec.clients_per_language < 1:
        raise UserError(f"clients_per_language must be >= 1, got {spec.clients_per_language}")
    if spec.alpha <= 0:
        raise UserError(f"dirichlet alpha must be > 0, got {spec.alpha}")
    if spec.group_size < 1:
        raise UserError(f"group_size must be >= 1, got {spec.group_size}")
    if spec.scheme not in SCHEMES:
        raise UserError(f"unknown partition scheme {spec.scheme!r}; schemes are {list(SCHEMES)}")
    fed = Federation(dataset=dataset.name, label_names=list(dataset.label_names), spec=spec)
    for lang in sorted(dataset.languages):
        data = dataset.languages[lang]
        pooled = [ex for split, rows in data.splits.items() if split != "test" for ex in rows]
        test = list(data.splits.get("test", []))
        rng = _rng(spec.seed, lang, "pools")
        if spec.group_size > 1 and test:  # premise groups whole; training may borrow the first test groups
            (tr_seen, tr_unseen), (te_seen, te_unseen) = grouped_halves(
                pooled, test, spec.group_size, spec.train_per_pool, spec.test_per_pool, rng, f"{dataset.name} {lang!r}")
            fed.clients.extend(_partition_pool(lang, "seen", tr_seen, te_seen, spec))
            fed.clients.extend(_partition_pool(lang, "unseen", tr_unseen, te_unseen, spec))
            continue
        if not test:
            rng.shuffle(pooled)
            n_test = int(round(len(pooled) * spec.test_fraction))
            test, pooled = pooled[:n_test], pooled[n_test:]
        # halves[pool] = (train rows, test rows) of that pool
        halves = dict(zip(POOLS, zip(_pool_halves(pooled, rng), _pool_halves(test, rng))))
        for pool in POOLS:
            train_rows, test_rows = halves[pool]
            if spec.train_per_pool is not None:
                train_rows = train_rows[: spec.train_per_pool]
            if spec.test_per_pool is not None:
                test_rows = test_rows[: spec.test_per_pool]
            fed.clients.extend(_partition_pool(lang, pool, train_rows, test_rows, spec))
    return fed


def _partition_pool(lang: str, pool: str, train_rows, test_rows, spec: FederationSpec) -> list[Client]:
    k = spec.clients_per_language
    need = k * spec.min_train_per_client
    if len(train_rows) < need or len(test_rows) < k:
        raise UserError(
            f"language {lang!r} has {len(train_rows)} train / {len(test_rows)} test rows in the {pool} pool: "
            f"too few for {k} clients with >= {spec.min_train_per_client} train and >= 1 test row each; "
            "lower clients_per_language"
        )
    seed = zlib.crc32(f"{spec.seed}|{lang}|{pool}|dirichlet".encode())
    rng = np.random.default_rng(seed)
    ytr = [ex.label for ex in train_rows]
    yte = [ex.label for ex in test_rows]
    split = client_mix_split if spec.scheme == "client-mix" else dirichlet_split
    for _ in range(spec.max_resamples):
        tr, te = split(ytr, yte, k, spec.alpha, rng)
        if min(map(len, tr)) >= spec.min_train_per_client and min(map(len, te)) >= 1:
            break
    else:
        raise UserError(
            f"language {lang!r}, {pool} pool: no Dirichlet(alpha={spec.alpha}) split in {spec.max_resamples} tries "
            f"gives every one of {k} clients >= {spec.min_train_per_client} train and >= 1 test row; "
            "lower clients_per_language or raise alpha"
        )
    return [
        Client(
            cid=f"{lang}-{pool}-{i:02d}",
            language=lang,
            pool=pool,
            train=[train_rows[j] for j in sorted(tr[i])],
            test=[test_rows[j] for j in sorted(te[i])],
        )
        for i in range(k)
    ]
