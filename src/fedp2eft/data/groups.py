"""Pool halves that keep groups of consecutive rows whole (XNLI's premise groups).

XNLI's dev and test files come in premise groups: three consecutive rows share one premise, one row per
label. A split that put a premise in training and the same premise in a test split would leak it, so
:func:`grouped_halves` assigns whole groups to each of the four parts of a language — seen train,
seen test, unseen train, unseen test. The shared XNLI copy has no train split (its README): when the
non-test rows cannot fill both pools' ``train_per_pool``, the first groups of the test file are
borrowed for training, and test rows come from the rest of the test file, so no test premise is ever
trained on — in any language, because XNLI's rows are parallel across languages and the borrowed
groups are the same positions for every language.

Inside a pool the clients' Dirichlet label skew splits a group's three rows by label (one row per
label), so the rows of one premise may reach several clients of the same pool and split; they never
cross from train to test or from one pool to the other.
"""

from __future__ import annotations

import math
import random

from ..errors import UserError
from .records import Example


def row_groups(rows: list[Example], size: int) -> list[list[Example]]:
    """Consecutive groups of ``size`` rows (a shorter last group if the rows do not divide)."""
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def _halves(groups: list[list[Example]], rng: random.Random, cap: int | None) -> tuple[list[Example], list[Example]]:
    """Shuffle whole groups, give each pool half of them, then cut each pool to ``cap`` rows (the rows
    cut off are used nowhere)."""
    groups = list(groups)
    rng.shuffle(groups)
    half = len(groups) // 2
    parts = [[ex for g in groups[:half] for ex in g], [ex for g in groups[half:2 * half] for ex in g]]
    return tuple(p[:cap] if cap is not None else p for p in parts)  # type: ignore[return-value]


def grouped_halves(pooled: list[Example], test: list[Example], size: int, train_per_pool: int | None,
                   test_per_pool: int | None, rng: random.Random, where: str):
    """``((seen train, unseen train), (seen test, unseen test))`` from a language's non-test rows
    (``pooled``) and test rows, in groups of ``size`` consecutive rows kept whole; ``where`` names the
    language in errors."""
    train_groups, test_groups = row_groups(pooled, size), row_groups(test, size)
    if train_per_pool is not None:
        want = 2 * math.ceil(train_per_pool / size)
        borrow = max(0, want - len(train_groups))
        if borrow:  # the first test groups become training rows (shared XNLI copy: no train split)
            train_groups, test_groups = train_groups + test_groups[:borrow], test_groups[borrow:]
        train_groups = train_groups[:want] if borrow else train_groups
    if test_per_pool is not None and len(test_groups) < 2 * math.ceil(test_per_pool / size):
        have = sum(map(len, test_groups))
        raise UserError(f"{where}: {have} test rows left after training takes its rows: too few for "
                        f"2 pools x {test_per_pool} (data.test_per_pool); lower data.train_per_pool or test_per_pool")
    if test_per_pool is not None:
        test_groups = test_groups[: 2 * math.ceil(test_per_pool / size)]
    return _halves(train_groups, rng, train_per_pool), _halves(test_groups, rng, test_per_pool)
